"""The CLI in scripts and at an 80-column terminal, against a running ``dockworker up``: early
readers (``head -1``, ``grep -q``), plain tab-separated output off a terminal, tables that fit
at one, ``--json`` everywhere."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from dockworker.cli.output import width_of

from .cli_support import BOX_DRAWING, assert_quiet, cli, in_terminal, ok, shell, with_reader_gone
from .support import TERMINAL, Service, upload_script, write_files

pytestmark = pytest.mark.docker

HELLO_SH = 'echo "hello $TASK_ID"\nfor i in 1 2 3; do echo "line $i"; done\n'
FAIL_SH = 'echo "a message long enough to be cut at eighty columns, and then some more words"\nexit 3\n'


def ok_json(service: Service, *args: str) -> Any:
    return json.loads(ok(service, *args, "--json"))


@pytest.fixture(scope="module")
def world(service: Service, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two packages, a complete and a failed task, a schedule."""
    root = tmp_path_factory.mktemp("workers")
    for name, script in (("hello", HELLO_SH), ("fail", FAIL_SH)):
        upload_script(service, root / name, name, script)
    api = service.api()
    complete = ok(service, "queue", "hello").strip()
    failed = ok(service, "queue", "fail").strip()
    for task_id in (complete, failed):
        api.wait_status(task_id, TERMINAL)
    schedule = ok_json(service, "schedule", "hello", "--every", "1d", "--start", "2099-01-01T00:00:00Z")
    return {"complete": complete, "failed": failed, "schedule": schedule["id"]}


READERS_GONE = [
    ("status", "{complete}"),
    ("tasks",),
    ("log", "{complete}"),
    ("log", "-f", "{complete}"),
    ("events", "{complete}"),
    ("schedules",),
    ("codes", "list"),
    ("stacks", "list"),
    ("--help",),
    ("--version",),
]


@pytest.mark.parametrize("args", READERS_GONE, ids=" ".join)
def test_every_command_exits_0_when_its_reader_has_gone(
    service: Service, world: dict[str, Any], args: tuple[str, ...]
) -> None:
    result = with_reader_gone(service, *(arg.format(**world) for arg in args))
    assert result.returncode == 0, result.stderr
    assert_quiet(result.stderr)


def test_a_gone_reader_of_stderr_too_changes_no_exit_status(service: Service, world: dict[str, Any]) -> None:
    assert (
        with_reader_gone(service, "log", "-f", world["complete"], "--json", stderr_too=True).returncode == 0
    )
    assert with_reader_gone(service, "log", "-f", world["failed"], stderr_too=True).returncode == 0
    assert with_reader_gone(service, "queue", "no-such-code", stderr_too=True).returncode == 2
    assert with_reader_gone(service, "tasks", "--status", "bogus", stderr_too=True).returncode == 2
    assert with_reader_gone(service, "tasks", "--no-such-option", stderr_too=True).returncode == 2


def test_head_and_grep_in_a_pipefail_shell(service: Service, world: dict[str, Any]) -> None:
    # The demo's loop: it used to spin forever (the CLI exited 1 on grep's early exit).
    script = f"""
    task={world["complete"]}
    tries=0
    until dockworker status "$task" | grep -qE 'status: (complete|error|timeout|cancelled|killed)'; do
      tries=$((tries + 1)); [ $tries -lt 20 ] || {{ echo "the loop did not end" >&2; exit 9; }}; sleep 0.2
    done
    dockworker tasks | head -1
    dockworker log -f "$task" | head -1
    dockworker stacks list | grep -q busybox
    dockworker schedules | grep -q {world["schedule"]}
    echo done
    """
    result = shell(service, script)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "done"
    assert_quiet(result.stderr)


def test_tables_fit_an_80_column_terminal_with_whole_ids(service: Service, world: dict[str, Any]) -> None:
    listed = {
        "tasks": [t["id"] for t in ok_json(service, "tasks")],
        "schedules": [s["id"] for s in ok_json(service, "schedules")],
        "codes list": [c["id"] for c in ok_json(service, "codes", "list")],
        "stacks list": [s["name"] for s in ok_json(service, "stacks", "list")],
        "token list": [
            t["id"] for t in ok_json(service, "token", "list", "--data-dir", str(service.data_dir))
        ],
    }
    for command, ids in listed.items():
        extra = ("--data-dir", str(service.data_dir)) if command == "token list" else ()
        code, shown = in_terminal(service, *command.split(), *extra, columns=80)
        assert code == 0, shown
        lines = shown.splitlines()
        assert all(width_of(line) <= 80 for line in lines), f"{command}:\n{shown}"
        assert not BOX_DRAWING.search(shown), f"{command}:\n{shown}"
        assert [line.split()[0] for line in lines[1:]] == ids, f"{command}: every id whole, in order"
    code, shown = in_terminal(service, "tasks", columns=80)
    failed_line = next(line for line in shown.splitlines() if line.startswith(world["failed"]))
    assert failed_line.endswith("…"), "a long msg is cut to fit, on one line"


def test_plain_output_is_tab_separated_records(service: Service, world: dict[str, Any]) -> None:
    tasks = ok_json(service, "tasks")
    plain = ok(service, "tasks")
    assert not BOX_DRAWING.search(plain)
    records = [line.split("\t") for line in plain.splitlines()]
    assert [r[0] for r in records] == [t["id"] for t in tasks], "no header, one task a line"
    assert {len(r) for r in records} == {6}
    failed = next(r for r in records if r[0] == world["failed"])
    assert failed[1:3] == ["fail", "error"]
    assert failed[5] == next(t["msg"] for t in tasks if t["id"] == world["failed"]), "whole, not cut"
    assert failed[5].endswith("and then some more words")
    ids = shell(service, "dockworker tasks | awk '{print $1}'")
    assert ids.stdout.split() == [t["id"] for t in tasks]

    stacks = [line.split("\t") for line in ok(service, "stacks", "list").splitlines()]
    assert len(stacks) == 13 and {len(s) for s in stacks} == {7}
    assert stacks[0][:3] == ["busybox", "1.35", "built"]


def test_queue_prints_only_the_id_when_piped(service: Service, world: dict[str, Any]) -> None:
    piped = ok(service, "queue", "hello", "-n", "2").split("\n")
    assert len(piped) == 3 and piped[2] == "" and all(len(i) == 24 for i in piped[:2])
    code, shown = in_terminal(service, "queue", "hello")
    assert code == 0
    assert shown.startswith("Queued task ") and shown.rstrip().endswith("(hello)")


def test_every_command_that_prints_has_json(service: Service, world: dict[str, Any], tmp_path: Path) -> None:
    complete, schedule = world["complete"], world["schedule"]
    assert ok_json(service, "status", complete)["id"] == complete
    assert {t["id"] for t in ok_json(service, "tasks")} >= {complete, world["failed"]}
    assert ok_json(service, "log", complete)["log"].startswith(f"hello {complete}")
    assert ok_json(service, "log", "-f", complete)["status"] == "complete"
    assert [e["kind"] for e in ok_json(service, "events", complete)]
    assert schedule in {s["id"] for s in ok_json(service, "schedules")}
    assert ok_json(service, "codes", "show", "hello")["command"] == "sh hello.sh"
    assert [r["rev"] for r in ok_json(service, "codes", "revisions", "hello")] == [1]
    assert ok_json(service, "stats", "hello")["complete"] >= 1
    assert len(ok_json(service, "stacks", "list")) == 13
    assert ok_json(service, "runners", "--data-dir", str(service.data_dir))[0]["alive"] is True
    assert ok_json(service, "projects", "list", "--data-dir", str(service.data_dir))
    queued = ok_json(service, "queue", "hello", "--delay", "3600")
    assert ok_json(service, "cancel", queued[0]["id"])["status"] == "cancelled"
    assert (
        ok_json(service, "retry", world["failed"], "--delay", "3600")["original_task_id"] == world["failed"]
    )
    assert ok_json(service, "pause", "hello")["msg"] == "Paused"
    assert ok_json(service, "resume", "hello")["msg"] == "Resumed"
    assert ok_json(service, "unschedule", schedule)["msg"]
    directory = write_files(tmp_path / "again", {"hello.sh": HELLO_SH})
    uploaded = ok_json(
        service, "upload", str(directory), "--name", "again", "--stack", "busybox", "--command", "sh hello.sh"
    )
    assert uploaded["rev"] == 1
    assert ok_json(service, "stacks", "build", "busybox")[0] == {
        **ok_json(service, "stacks", "build", "busybox")[0],
        "name": "busybox",
        "built": False,
    }


def test_version_and_unwrapped_errors(service: Service) -> None:
    assert ok(service, "--version").strip().startswith("dockworker 0.")
    missing = "/" + "/".join(["a-rather-long-directory-name"] * 5) + "/iron.json"
    result = cli(service, "tasks", "--config", missing)
    assert result.returncode == 2
    assert result.stderr == f"error: --config {missing}: no such file\n", "one line, not wrapped"
