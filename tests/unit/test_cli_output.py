"""The CLI's output: tables that fit a terminal, plain records elsewhere, text flattened."""

from __future__ import annotations

import pytest

from dockworker.cli import output
from dockworker.cli.output import Col, cut, fit_columns, flat, show_bytes, show_milliseconds, width_of
from dockworker.cli.task_commands import HUMAN_UNITS, STATUS_KEYS

IDS = ["6b0f757508819e1a276fff31", "6b0f757408819cdcfa5352d3"]
TASKS = [
    {"id": IDS[0], "code": "hello", "status": "complete", "created": "2026-12-02T01:33:41.775Z", "msg": ""},
    {
        "id": IDS[1],
        "code": "hello",
        "status": "error",
        "created": "2026-12-02T01:33:40.602Z",
        "msg": "x" * 90,
    },
]
COLUMNS = [
    Col("id", lambda t: t["id"]),
    Col("code", lambda t: t["code"]),
    Col("status", lambda t: t["status"]),
    Col("created", lambda t: t["created"], drop=1),
    Col("msg", lambda t: t["msg"], flex=True, min_width=20),
]


def at_terminal(monkeypatch: pytest.MonkeyPatch, columns: int) -> None:
    monkeypatch.setattr(output, "stdout_is_terminal", lambda: True)
    monkeypatch.setenv("COLUMNS", str(columns))
    monkeypatch.setenv("NO_COLOR", "1")


def test_a_table_fits_80_columns_and_keeps_whole_ids(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    at_terminal(monkeypatch, 80)
    output.table(COLUMNS, TASKS)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["id", "code", "status", "msg"], "the lowest-ranked column goes first"
    assert all(width_of(line) <= 80 for line in lines)
    assert [line.split()[0] for line in lines[1:]] == IDS
    assert lines[2].endswith("…")


def test_a_wide_terminal_shows_every_column_whole(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    at_terminal(monkeypatch, 200)
    output.table(COLUMNS, TASKS)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["id", "code", "status", "created", "msg"]
    assert lines[2].endswith("x" * 90)


def test_off_a_terminal_records_are_tab_separated_without_a_header(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(output, "stdout_is_terminal", lambda: False)
    output.table(COLUMNS, [{**TASKS[1], "msg": "two\nlines\tand a tab"}])
    assert (
        capsys.readouterr().out
        == "\t".join([IDS[1], "hello", "error", TASKS[1]["created"], "two lines and a tab"]) + "\n"
    )


def test_columns_that_cannot_shrink_are_kept_when_nothing_is_left_to_drop() -> None:
    rows = [["a" * 30, "b" * 30, "c" * 30]]
    columns = [Col("a", str), Col("b", str), Col("c", str, flex=True, min_width=10)]
    shown, widths = fit_columns(columns, rows, 50)
    assert shown == [0, 1, 2]
    assert widths == [30, 30, 10]


def test_cut_and_flat() -> None:
    assert cut("abcdef", 4) == "abc…"
    assert cut("abc", 4) == "abc"
    assert cut("日本語テキスト", 5) == "日本…"
    assert width_of("日本") == 4
    assert flat(None) == "" and flat(True) == "yes" and flat(["a", "b"]) == "a, b"


USED = {"id": IDS[0], "duration": 2500, "cpu_time_ms": 1234, "peak_memory_bytes": 161390592, "msg": None}


def test_status_shows_usage_in_human_units_at_a_terminal(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    at_terminal(monkeypatch, 100)
    output.fields(USED, STATUS_KEYS, human=HUMAN_UNITS)
    assert capsys.readouterr().out.splitlines() == [
        f"               id: {IDS[0]}",
        "         duration: 2.50 s",
        "      cpu_time_ms: 1.23 s",
        "peak_memory_bytes: 153.9 MiB",
    ]


def test_status_keeps_the_integers_off_a_terminal_and_in_json(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(output, "stdout_is_terminal", lambda: False)
    output.fields(USED, STATUS_KEYS, human=HUMAN_UNITS)
    assert capsys.readouterr().out.splitlines() == [
        f"id: {IDS[0]}",
        "duration: 2500",
        "cpu_time_ms: 1234",
        "peak_memory_bytes: 161390592",
    ]
    at_terminal(monkeypatch, 100)
    output.fields(USED, STATUS_KEYS, as_json=True, human=HUMAN_UNITS)
    assert '"cpu_time_ms": 1234' in capsys.readouterr().out


def test_status_leaves_out_usage_not_recorded(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    at_terminal(monkeypatch, 100)
    output.fields(
        {"id": IDS[0], "cpu_time_ms": None, "peak_memory_bytes": None}, STATUS_KEYS, human=HUMAN_UNITS
    )
    assert capsys.readouterr().out.splitlines() == [f"id: {IDS[0]}"]


@pytest.mark.parametrize(
    ("ms", "text"),
    [(0, "0 ms"), (850, "850 ms"), (1250, "1.25 s"), (125_000, "2 min 5 s"), (3_720_000, "1 h 2 min")],
)
def test_milliseconds_for_a_person(ms: int, text: str) -> None:
    assert show_milliseconds(ms) == text


@pytest.mark.parametrize(
    ("count", "text"),
    [
        (512, "512 B"),
        (4096, "4.0 KiB"),
        (150 * 2**20, "150.0 MiB"),
        (5 * 2**30, "5.0 GiB"),
        (3 * 2**40, "3.0 TiB"),
    ],
)
def test_bytes_for_a_person(count: int, text: str) -> None:
    assert show_bytes(count) == text
