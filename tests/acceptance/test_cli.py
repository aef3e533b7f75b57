"""The ``dockworker`` CLI against a running ``dockworker up``, each command a real subprocess."""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from tests.helpers import left_after

from .support import (
    TERMINAL,
    Service,
    popen_cli,
    remove_task_containers,
    run_cli,
    task_containers,
    upload_script,
    write_files,
)

pytestmark = pytest.mark.docker

HELLO_SH = """\
echo "task id: $TASK_ID"
echo "payload: $(cat "$PAYLOAD_FILE")"
echo "a line on stderr" >&2
sleep 2
echo "bye"
"""
FAIL_SH = 'echo "about to fail"\nexit 3\n'
TICKER_SH = 'for i in 1 2 3 4; do echo "tick $i"; sleep 1; done\necho "ticker done"\n'


@pytest.fixture(scope="module")
def uploads(service: Service, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The code packages of this module, uploaded through the CLI (the results are checked in
    test_upload)."""
    root = tmp_path_factory.mktemp("workers")
    workers = {
        "hello": (write_files(root / "hello", {"hello.sh": HELLO_SH}), "sh hello.sh"),
        "fail": (write_files(root / "fail", {"fail.sh": FAIL_SH}), "sh fail.sh"),
        "ticker": (write_files(root / "ticker", {"ticker.sh": TICKER_SH}), "sh ticker.sh"),
        "sleeper": (write_files(root / "sleeper", {"README": "sleeps\n"}), "sleep 300"),
    }
    return {
        name: run_cli(
            service, "upload", str(directory), "--name", name, "--stack", "busybox", "--command", command
        )
        for name, (directory, command) in workers.items()
    }


def _queue(service: Service, name: str, *extra: str) -> str:
    result = run_cli(service, "queue", name, *extra)
    assert result.returncode == 0, result.stderr
    task_id = result.stdout.strip()
    assert len(task_id.split()) == 1, f"expected one task id, got {result.stdout!r}"
    return task_id


@pytest.fixture(scope="module")
def hello_task(service: Service, uploads: dict[str, Any]) -> str:
    """A completed hello task, queued through the CLI without --wait."""
    task_id = _queue(service, "hello", "--payload", '{"a":1}')
    task = service.api().wait_status(task_id, TERMINAL)
    assert task["status"] == "complete", f"hello ended {task['status']}: {task['msg']}"
    return task_id


@pytest.fixture
def cleanup_tasks(service: Service) -> Iterator[list[str]]:
    """Task ids to cancel (and whose containers to remove) if a test leaves them running."""
    ids: list[str] = []
    yield ids
    api = service.api()
    for task_id in ids:
        api.cancel_quietly(task_id)
        remove_task_containers(task_id)


def _pump(stream: IO[str], into: queue.Queue[tuple[float, str | None]]) -> None:
    for line in stream:
        into.put((time.monotonic(), line))
    into.put((time.monotonic(), None))


def test_upload(service: Service, uploads: dict[str, Any], tmp_path: Path) -> None:
    hello = uploads["hello"]
    assert hello.returncode == 0, hello.stderr
    assert "Uploaded hello revision 1" in hello.stdout
    for name, result in uploads.items():
        assert result.returncode == 0, f"{name}: {result.stderr}"
    codes = {c["name"]: c for c in service.api().get("/codes")["codes"]}
    assert {"hello", "fail", "ticker", "sleeper"} <= set(codes)
    assert codes["hello"]["stack"] == "busybox"
    assert codes["hello"]["command"] == "sh hello.sh"
    assert codes["hello"]["code_size"] > 0

    directory = write_files(tmp_path / "hello", {"hello.sh": HELLO_SH})
    again = run_cli(
        service,
        "upload",
        str(directory),
        "--name",
        "hello",
        "--stack",
        "busybox",
        "--command",
        "sh hello.sh",
        "--json",
    )
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["rev"] == 2, "a second upload under the same name is a new revision"


def test_queue_wait_streams_the_log_live_and_exits_zero(service: Service, uploads: dict[str, Any]) -> None:
    api = service.api()
    lines: queue.Queue[tuple[float, str | None]] = queue.Queue()
    received: list[str] = []
    with popen_cli(service, "queue", "hello", "--payload", '{"a":1}', "--wait") as process:
        assert process.stdout is not None
        assert process.stderr is not None
        reader = threading.Thread(target=_pump, args=(process.stdout, lines), daemon=True)
        reader.start()
        try:
            # Read up to the task id (the first line the worker writes).
            while not received or not received[-1].startswith("task id: "):
                line = lines.get(timeout=30)[1]
                assert line is not None, f"output ended early: {received!r}"
                received.append(line)
            task_id = received[-1].removeprefix("task id: ").strip()
            # The worker sleeps 2 s after its first lines: seeing them now, with the task still
            # running, means the log is streamed and not printed at the end.
            now = api.task(task_id)
            assert now["status"] == "running", (
                f"task {now['status']} ({now['msg']}) when its first line arrived"
            )
            code = process.wait(timeout=30)
            stderr = process.stderr.read()
        finally:
            if process.poll() is None:
                process.kill()
        reader.join(10)
    while not lines.empty():
        received.append(lines.get_nowait()[1] or "")
    stdout = "".join(received)
    assert code == 0, stderr
    assert 'payload: {"a":1}' in stdout
    assert "a line on stderr" in stdout
    assert stdout.rstrip().endswith("bye")
    assert f"Queued task {task_id}" in stderr
    assert f"Task {task_id} complete" in stderr
    assert api.task(task_id)["status"] == "complete"


def test_queue_wait_of_a_failing_task_exits_nonzero(service: Service, uploads: dict[str, Any]) -> None:
    result = run_cli(service, "queue", "fail", "--wait")
    assert result.returncode != 0
    assert "about to fail" in result.stdout
    assert " error: exit code 3" in result.stderr


def test_status(service: Service, hello_task: str) -> None:
    result = run_cli(service, "status", hello_task)
    assert result.returncode == 0, result.stderr
    fields = dict(line.strip().split(": ", 1) for line in result.stdout.splitlines() if ": " in line)
    assert fields["id"] == hello_task
    assert fields["code_name"] == "hello"
    assert fields["status"] == "complete"
    assert fields["exit_code"] == "0"
    # what the task used, as the runner measured it: integers off a terminal
    assert fields["cpu_time_ms"].isdigit() and int(fields["peak_memory_bytes"]) > 0

    as_json = run_cli(service, "status", hello_task, "--json")
    assert as_json.returncode == 0, as_json.stderr
    task = json.loads(as_json.stdout)
    assert task["id"] == hello_task
    assert task["status"] == "complete"
    assert task["payload"] == '{"a":1}'
    assert task["cpu_time_ms"] == int(fields["cpu_time_ms"])
    assert task["peak_memory_bytes"] == int(fields["peak_memory_bytes"])


PROGRESS_SH = """\
echo "40 working" > "$PROGRESS_FILE"
sleep 3
echo '{"percent": 100, "msg": "all done"}' > "$PROGRESS_FILE"
"""


def _status_fields(service: Service, task_id: str) -> dict[str, str]:
    result = run_cli(service, "status", task_id)
    assert result.returncode == 0, result.stderr
    return dict(line.strip().split(": ", 1) for line in result.stdout.splitlines() if ": " in line)


def test_status_shows_the_progress_the_worker_reports(
    service: Service, tmp_path: Path, cleanup_tasks: list[str]
) -> None:
    upload_script(service, tmp_path / "progress", "progress", PROGRESS_SH)
    task_id = _queue(service, "progress")
    cleanup_tasks.append(task_id)
    api = service.api()
    deadline = time.monotonic() + 30
    while api.task(task_id)["percent"] != 40:
        assert time.monotonic() < deadline, f"no progress reported: {api.task(task_id)}"
        time.sleep(0.1)
    running = _status_fields(service, task_id)
    assert (running["status"], running["percent"], running["msg"]) == ("running", "40", "working")
    assert api.wait_status(task_id, TERMINAL)["status"] == "complete"
    ended = _status_fields(service, task_id)
    assert (ended["status"], ended["percent"], ended["msg"]) == ("complete", "100", "all done")


def test_log(service: Service, hello_task: str) -> None:
    result = run_cli(service, "log", hello_task)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    # stderr belongs in the log too, where the worker wrote it among the stdout lines
    assert lines == [f"task id: {hello_task}", 'payload: {"a":1}', "a line on stderr", "bye"]


def test_log_follow_streams_until_the_task_ends(
    service: Service, uploads: dict[str, Any], cleanup_tasks: list[str]
) -> None:
    api = service.api()
    task_id = _queue(service, "ticker")
    cleanup_tasks.append(task_id)
    api.wait_status(task_id, {"running"})
    with popen_cli(service, "log", task_id, "-f") as process:
        try:
            now = api.task(task_id)
            assert now["status"] == "running", (
                f"the ticker should be running, is {now['status']} ({now['msg']})"
            )
            stdout, stderr = process.communicate(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
    ended = api.task(task_id)
    assert process.returncode == 0, stderr
    assert ended["status"] == "complete", f"log -f returned with the task {ended['status']}: {ended['msg']}"
    assert [line for line in stdout.splitlines() if line] == [
        "tick 1",
        "tick 2",
        "tick 3",
        "tick 4",
        "ticker done",
    ]


def test_tasks_json(service: Service, hello_task: str) -> None:
    result = run_cli(service, "tasks", "--json")
    assert result.returncode == 0, result.stderr
    listed = {t["id"]: t for t in json.loads(result.stdout)}
    assert hello_task in listed
    assert listed[hello_task]["code_name"] == "hello"
    assert listed[hello_task]["status"] == "complete"

    filtered = run_cli(service, "tasks", "--code", "hello", "--status", "complete", "--json")
    assert filtered.returncode == 0, filtered.stderr
    found = json.loads(filtered.stdout)
    assert hello_task in {t["id"] for t in found}
    assert all(t["code_name"] == "hello" and t["status"] == "complete" for t in found)


def test_cancel_kills_the_running_container(
    service: Service, uploads: dict[str, Any], cleanup_tasks: list[str]
) -> None:
    api = service.api()
    task_id = _queue(service, "sleeper")
    cleanup_tasks.append(task_id)
    api.wait_status(task_id, {"running"})
    assert len(task_containers(task_id)) == 1, "the running task should have exactly one container"

    started = time.monotonic()
    result = run_cli(service, "cancel", task_id, timeout=30)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert "Cancelled (cancelled)" in result.stdout
    task = api.task(task_id)
    assert task["status"] == "cancelled"
    assert elapsed < 5, f"cancel took {elapsed:.1f} s (CLI start included)"
    left = left_after(lambda: task_containers(task_id))
    assert left == [], "the cancelled task's container is still on the engine"


def test_retry_creates_a_linked_task(service: Service, uploads: dict[str, Any]) -> None:
    api = service.api()
    original = _queue(service, "fail")
    api.wait_status(original, {"error"})

    result = run_cli(service, "retry", original)
    assert result.returncode == 0, result.stderr
    new_id = result.stdout.strip()
    assert len(new_id.split()) == 1, f"expected one task id, got {result.stdout!r}"
    assert new_id != original

    shown = run_cli(service, "status", new_id, "--json")
    assert shown.returncode == 0, shown.stderr
    retried = json.loads(shown.stdout)
    assert retried["original_task_id"] == original
    assert retried["retry_count"] == 1
    assert retried["code_name"] == "fail"
    assert api.task(original)["retry_task_id"] == new_id
    assert api.wait_status(new_id, {"complete", "error"})["status"] == "error"


def test_upload_needs_a_stack_or_an_image(service: Service, tmp_path: Path) -> None:
    directory = write_files(tmp_path / "w", {"main.sh": "echo hi\n"})
    result = run_cli(service, "upload", str(directory), "--name", "nostack", "--command", "sh main.sh")
    assert result.returncode != 0
    assert "--stack" in result.stderr
    assert "--image" in result.stderr
    assert "nostack" not in {c["name"] for c in service.api().get("/codes")["codes"]}


def test_queue_of_an_unknown_code_fails(service: Service) -> None:
    result = run_cli(service, "queue", "no-such-code")
    assert result.returncode != 0
    assert "not found" in result.stderr
    assert result.stdout.strip() == ""


def test_status_of_an_unknown_task_fails(service: Service) -> None:
    result = run_cli(service, "status", "0123456789abcdef01234567")
    assert result.returncode != 0
    assert "not found" in result.stderr.lower()
    assert result.stdout.strip() == ""
