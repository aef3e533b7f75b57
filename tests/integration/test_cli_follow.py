"""``dockworker log -f`` (a real CLI process) against a real uvicorn whose service begins to
stop: the stream ends by itself with a last line, and the CLI closes with what it knows."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from dockworker.api import create_app, tasks
from dockworker.models import CodeSpec, TaskOutcome
from dockworker.settings import Settings
from dockworker.states import TaskStatus
from dockworker.store import Store
from tests.acceptance.support import LOOPBACK, clean_env, dockworker_command
from tests.helpers import queue, save_code
from tests.integration.live_server import serving

RUNNER = "test-runner"


@pytest.fixture
def running_task(store: Store, tmp_path: Path) -> tuple[str, Path, Store]:
    """A task leased and running (no container: the test plays the runner), and an iron.json
    for its project."""
    project = store.create_project("p")
    token, _ = store.create_token(project.id, "t")
    save_code(store, project.id, CodeSpec(name="w", stack="busybox", command="sh w.sh"), {"w.sh": ""})
    task = queue(store, project.id, "w")
    claimed = store.claim(RUNNER, ["default"], 60)
    assert claimed is not None and claimed.id == task.id
    assert store.mark_running(task.id, RUNNER, time.time())
    iron_json = tmp_path / "iron.json"
    iron_json.write_text(json.dumps({"project_id": project.id, "token": token, "host": LOOPBACK}))
    return task.id, iron_json, store


def follow(iron_json: Path, port: int, task_id: str) -> subprocess.Popen[str]:
    config = json.loads(iron_json.read_text())
    iron_json.write_text(json.dumps({**config, "port": port}))
    return subprocess.Popen(
        [*dockworker_command(), "log", "-f", task_id],
        env=clean_env(DOCKWORKER_IRON_JSON=str(iron_json)),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def rest_of(process: subprocess.Popen[str]) -> tuple[str, str]:
    """What is left of the output once the process ends (after lines were read from it)."""
    assert process.stdout is not None and process.stderr is not None
    stdout = process.stdout.read()  # ends when the process closes it: pytest's timeout bounds it
    stderr = process.stderr.read()
    process.wait(30)
    return stdout, stderr


@pytest.mark.dialects("sqlite")
def test_the_stream_ends_with_a_last_line_when_the_service_stops(
    settings: Settings, running_task: tuple[str, Path, Store]
) -> None:
    task_id, iron_json, store = running_task
    store.append_log(task_id, b"first line\nno newline yet")
    stopping = threading.Event()
    app = create_app(settings, store, stopping=stopping)
    with serving(app) as port, follow(iron_json, port, task_id) as process:
        assert process.stdout is not None
        assert process.stdout.readline() == "first line\n", "the log is streamed before the stop"
        stopping.set()
        stdout, stderr = rest_of(process)
    assert process.returncode == 3, stderr
    assert stdout == (
        "no newline yet\n"
        f"[dockworker] the server is stopping: this log stream ends here, with task {task_id} still running\n"
    )
    assert stderr.strip() == (
        f"Task {task_id} is still running: the server is stopping. Follow it again with "
        f"'dockworker log -f {task_id}' once the service is back."
    )
    assert store.load_task(task_id).status is TaskStatus.RUNNING


@pytest.mark.dialects("sqlite")
def test_a_follow_that_starts_while_stopping_ends_at_once(
    settings: Settings, running_task: tuple[str, Path, Store]
) -> None:
    task_id, iron_json, store = running_task
    stopping = threading.Event()
    stopping.set()
    with (
        serving(create_app(settings, store, stopping=stopping)) as port,
        follow(iron_json, port, task_id) as process,
    ):
        stdout, stderr = process.communicate(timeout=30)
    assert process.returncode == 3, stderr
    assert stdout.startswith("[dockworker] the server is stopping")
    assert "Traceback" not in stderr


@pytest.mark.dialects("sqlite")
@pytest.mark.parametrize(
    ("outcome", "code", "closing"),
    [
        (TaskOutcome(status=TaskStatus.COMPLETE, msg="", exit_code=0), 0, "complete (exit code 0)"),
        (TaskOutcome(status=TaskStatus.ERROR, msg="exit code 3", exit_code=3), 1, "error: exit code 3"),
        (
            TaskOutcome(status=TaskStatus.CANCELLED, msg="cancelled by user"),
            1,
            "cancelled: cancelled by user",
        ),
    ],
)
def test_the_closing_line_and_status_say_how_the_task_ended(
    settings: Settings, running_task: tuple[str, Path, Store], outcome: TaskOutcome, code: int, closing: str
) -> None:
    task_id, iron_json, store = running_task
    store.append_log(task_id, b"work\n")
    with serving(create_app(settings, store)) as port, follow(iron_json, port, task_id) as process:
        assert process.stdout is not None
        assert process.stdout.readline() == "work\n"
        assert store.finish(task_id, RUNNER, outcome)
        stdout, stderr = rest_of(process)
    assert (process.returncode, stdout) == (code, "")
    assert stderr.strip() == f"Task {task_id} {closing}"


class RequestLog:
    """An ASGI wrapper that notes each request's path and query."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.seen: list[str] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            self.seen.append(f"{scope['path']}?{scope['query_string'].decode()}")
        await self.app(scope, receive, send)


@pytest.mark.timeout(60)
@pytest.mark.dialects("sqlite", "postgresql")
def test_the_follow_ends_when_the_task_does_not_at_a_poll(
    settings: Settings, running_task: tuple[str, Path, Store], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The log stream and the CLI's last look at the task wait for the task's end: with their
    re-reads pushed out of reach, only the end's announcement can close the stream in time."""
    monkeypatch.setattr(tasks, "FOLLOW_POLL_S", 120.0)
    monkeypatch.setattr(tasks, "RECHECK_S", 120.0)
    task_id, iron_json, store = running_task
    store.append_log(task_id, b"work\n")
    app = RequestLog(create_app(settings, store))
    with serving(app) as port, follow(iron_json, port, task_id) as process:
        assert process.stdout is not None
        assert process.stdout.readline() == "work\n"
        store.append_log(task_id, b"last words\n")
        assert store.finish(task_id, RUNNER, TaskOutcome(status=TaskStatus.COMPLETE, msg="", exit_code=0))
        stdout, stderr = rest_of(process)
    assert (process.returncode, stdout) == (0, "last words\n"), stderr
    project_id = json.loads(iron_json.read_text())["project_id"]
    assert app.seen[-1] == f"/2/projects/{project_id}/tasks/{task_id}?wait=5.0"
