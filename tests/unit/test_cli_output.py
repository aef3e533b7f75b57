"""The CLI's output: tables that fit a terminal, plain records elsewhere, text flattened."""

from __future__ import annotations

import pytest

from dockworker.cli import output
from dockworker.cli.output import Col, cut, fit_columns, flat, width_of

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
