"""``GET /tasks/{id}?wait=S``: the answer comes when the task ends, woken by the store's task-end
announcements (this process's writes; on PostgreSQL, any process's through NOTIFY), without a
thread per waiter, and at once when the server begins to stop. The fallback re-read
(``RECHECK_S``) is pushed out of reach in these tests, so an answer before the wait is over can
only come from a wake-up."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import httpx2
import pytest

from dockworker.api import create_app, tasks, waiting
from dockworker.models import CodeSpec, TaskOutcome
from dockworker.settings import Settings
from dockworker.states import TaskStatus
from dockworker.store import Store, open_store
from tests.helpers import queue, save_code
from tests.integration.live_server import serving

pytestmark = pytest.mark.timeout(30)

RUNNER = "test-runner"
LONG_WAIT_S = 60  # beyond pytest's timeout: an answer that waits for it fails the test


@pytest.fixture(autouse=True)
def _no_fallback_poll(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tasks, "RECHECK_S", 120.0)
    monkeypatch.setattr(waiting, "RECHECK_S", 120.0)


class Server:
    def __init__(self, port: int, project_id: str, token: str) -> None:
        self.root = f"http://127.0.0.1:{port}"
        self.client = httpx2.Client(
            base_url=f"http://127.0.0.1:{port}/2/projects/{project_id}",
            headers={"Authorization": f"OAuth {token}"},
            timeout=LONG_WAIT_S + 10,
            trust_env=False,
        )
        self.pool = ThreadPoolExecutor(max_workers=80)

    def get(self, path: str, **params: Any) -> Any:
        return self.client.get(path, params=params)

    def later(self, path: str, **params: Any) -> Future[Any]:
        return self.pool.submit(self.get, path, **params)

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        self.client.close()


@pytest.fixture
def project(store: Store) -> tuple[str, str]:
    project = store.create_project("p")
    token, _ = store.create_token(project.id, "t")
    save_code(store, project.id, CodeSpec(name="w", stack="busybox", command="sh w.sh"), {"w.sh": ""})
    return project.id, token


@pytest.fixture
def served(
    settings: Settings, store: Store, project: tuple[str, str]
) -> Iterator[Callable[..., tuple[Server, threading.Event]]]:
    """An API server on the test's store (more than one may be started, each its own store)."""
    stack = []

    def start(on_store: Store | None = None) -> tuple[Server, threading.Event]:
        stopping = threading.Event()
        context = serving(create_app(settings, on_store or store, stopping=stopping))
        port = context.__enter__()
        server = Server(port, *project)
        stack.append((context, server, stopping))
        # FastAPI builds its routes' parameter models at the first request, and the routers are
        # shared by the apps of this process: one request now, so that two servers never build
        # them at the same time (pydantic then warns, which these tests take as an error).
        assert server.client.get(f"http://127.0.0.1:{port}/no-such-route").status_code == 404
        return server, stopping

    yield start
    for context, server, stopping in reversed(stack):
        stopping.set()
        server.close()
        context.__exit__(None, None, None)


def running_task(store: Store, project_id: str) -> str:
    task = queue(store, project_id, "w")
    claimed = store.claim(RUNNER, ["default"], 60)
    assert claimed is not None and claimed.id == task.id
    assert store.mark_running(task.id, RUNNER, time.time())
    return task.id


def until_waiting(store: Store, count: int = 1) -> None:
    """Until ``count`` requests are registered as waiters (listening to the store's ends)."""
    listeners: list[object] = store._task_ends._listeners  # type: ignore[attr-defined]
    deadline = time.monotonic() + 10
    while not listeners:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    (listener,) = listeners
    waiters = listener.__self__  # type: ignore[attr-defined]
    while sum(len(w) for w in waiters._waiters.values()) < count:
        assert time.monotonic() < deadline, "the requests did not start waiting"
        time.sleep(0.01)


def test_the_answer_comes_when_the_task_ends(
    store: Store, project: tuple[str, str], served: Callable[..., tuple[Server, threading.Event]]
) -> None:
    server, _ = served()
    task_id = running_task(store, project[0])
    answer = server.later(f"/tasks/{task_id}", wait=LONG_WAIT_S)
    until_waiting(store)
    assert not answer.done()
    assert store.finish(task_id, RUNNER, TaskOutcome(status=TaskStatus.COMPLETE, msg="", exit_code=0))
    response = answer.result()
    assert response.status_code == 200
    assert response.json()["status"] == "complete" and response.json()["exit_code"] == 0


def test_a_finished_task_answers_at_once_and_a_running_one_after_the_wait(
    store: Store, project: tuple[str, str], served: Callable[..., tuple[Server, threading.Event]]
) -> None:
    server, _ = served()
    task_id = running_task(store, project[0])
    response = server.get(f"/tasks/{task_id}", wait=0.3)
    assert response.status_code == 200 and response.json()["status"] == "running"
    store.finish(task_id, RUNNER, TaskOutcome(status=TaskStatus.ERROR, msg="exit code 3", exit_code=3))
    response = server.get(f"/tasks/{task_id}", wait=LONG_WAIT_S)
    assert response.json()["status"] == "error"
    assert server.get("/tasks/nope", wait=1).status_code == 404


class CountingReads:
    """``store.get_task``, counting the reads that found the task ended (the API reads a task
    through it; on PostgreSQL the listener's connection also wakes waiters, to read again)."""

    def __init__(self, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
        self.found_ended = 0
        self._read = store.get_task
        monkeypatch.setattr(store, "get_task", self)

    def __call__(self, project_id: str, task_id: str) -> Any:
        task = self._read(project_id, task_id)
        self.found_ended += task.status.is_terminal
        return task


def test_a_waiter_woken_by_an_end_written_here_answers_without_reading_again(
    store: Store,
    project: tuple[str, str],
    served: Callable[..., tuple[Server, threading.Event]],
    monkeypatch: pytest.MonkeyPatch,
    dialect: str,
) -> None:
    server, _ = served()
    task_id = running_task(store, project[0])
    reads = CountingReads(store, monkeypatch)
    answer = server.later(f"/tasks/{task_id}", wait=LONG_WAIT_S)
    until_waiting(store)
    outcome = TaskOutcome(
        status=TaskStatus.COMPLETE, msg="", exit_code=0, cpu_time_ms=7, peak_memory_bytes=4096
    )
    assert store.finish(task_id, RUNNER, outcome)
    pushed = answer.result().json()
    if dialect == "sqlite":
        # (On PostgreSQL the end's NOTIFY may come back through the listener, which names the
        # task only, before the writer's own announcement: that waiter reads it, as before.)
        assert reads.found_ended == 0  # answered with the task as the end left it
    # the same answer as a read of the task now
    assert pushed == server.get(f"/tasks/{task_id}").json()
    assert pushed["status"] == "complete" and pushed["end_time"]


def test_an_end_that_queued_a_retry_is_read_again(
    store: Store,
    project: tuple[str, str],
    served: Callable[..., tuple[Server, threading.Event]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The retry is written into the ended task's row after its end: the waiter reads it."""
    server, _ = served()
    project_id = project[0]
    save_code(
        store, project_id, CodeSpec(name="w", stack="busybox", command="sh w.sh", retries=1), {"w.sh": ""}
    )
    task_id = running_task(store, project_id)
    reads = CountingReads(store, monkeypatch)
    answer = server.later(f"/tasks/{task_id}", wait=LONG_WAIT_S)
    until_waiting(store)
    assert store.finish(task_id, RUNNER, TaskOutcome(status=TaskStatus.ERROR, msg="exit code 1", exit_code=1))
    ended = answer.result().json()
    assert reads.found_ended == 1
    assert ended["status"] == "error" and ended["retry_task_id"]


@pytest.mark.parametrize("value", ["-1", "60.5", "3600", "soon", "nan"])
def test_a_bad_wait_is_refused(
    store: Store, project: tuple[str, str], served: Callable[..., tuple[Server, threading.Event]], value: str
) -> None:
    server, _ = served()
    task_id = running_task(store, project[0])
    response = server.get(f"/tasks/{task_id}", wait=value)
    assert response.status_code == 400
    assert set(response.json()) == {"msg"} and "wait" in response.json()["msg"]


def test_waiters_hold_no_threads(
    store: Store, project: tuple[str, str], served: Callable[..., tuple[Server, threading.Event]]
) -> None:
    """More waiters than the server's thread pool has threads (40): the server still answers."""
    server, _ = served()
    task_id = running_task(store, project[0])
    answers = [server.later(f"/tasks/{task_id}", wait=LONG_WAIT_S) for _ in range(60)]
    until_waiting(store, 60)
    assert server.get(f"/tasks/{task_id}").json()["status"] == "running"
    assert store.request_cancel(project[0], task_id).cancel_requested
    store.finish(task_id, RUNNER, TaskOutcome(status=TaskStatus.CANCELLED, msg="cancelled", exit_code=None))
    assert {a.result().json()["status"] for a in answers} == {"cancelled"}


def test_a_queue_cancelled_at_once_wakes_its_waiters(
    store: Store, project: tuple[str, str], served: Callable[..., tuple[Server, threading.Event]]
) -> None:
    server, _ = served()
    project_id = project[0]
    task_id = queue(store, project_id, "w").id
    answer = server.later(f"/tasks/{task_id}", wait=LONG_WAIT_S)
    until_waiting(store)
    code = store.find_code(project_id, "w")
    assert code is not None
    assert store.cancel_all(project_id, code.id) == (1, 0)
    assert answer.result().json()["status"] == "cancelled"


def test_a_stopping_server_answers_its_waiters_at_once(
    store: Store, project: tuple[str, str], served: Callable[..., tuple[Server, threading.Event]]
) -> None:
    server, stopping = served()
    task_id = running_task(store, project[0])
    answer = server.later(f"/tasks/{task_id}", wait=LONG_WAIT_S)
    until_waiting(store)
    stopping.set()
    assert answer.result().json()["status"] == "running"
    # Asked while stopping: at once too.
    assert server.get(f"/tasks/{task_id}", wait=LONG_WAIT_S).json()["status"] == "running"


@pytest.mark.dialects("postgresql")
def test_an_end_written_by_another_process_wakes_the_waiters(
    store: Store,
    store_url: str,
    project: tuple[str, str],
    served: Callable[..., tuple[Server, threading.Event]],
) -> None:
    """Two API servers on one database, each with its store; the end is written by a third
    process (a runner of another host)."""
    other = open_store(store_url)
    try:
        first, _ = served()
        second, _ = served(other)
        task_id = running_task(store, project[0])
        answers = [first.later(f"/tasks/{task_id}", wait=LONG_WAIT_S)]
        answers.append(second.later(f"/tasks/{task_id}", wait=LONG_WAIT_S))
        until_waiting(store)
        until_waiting(other)
        finish = (
            "import sys; from dockworker.store import open_store; "
            "from dockworker.models import TaskOutcome; from dockworker.states import TaskStatus; "
            "store = open_store(sys.argv[1]); "
            "ok = store.finish(sys.argv[2], sys.argv[3], TaskOutcome(status=TaskStatus.COMPLETE, msg='')); "
            "store.close(); sys.exit(0 if ok else 1)"
        )
        subprocess.run([sys.executable, "-c", finish, store_url, task_id, RUNNER], check=True, timeout=30)
        assert [a.result().json()["status"] for a in answers] == ["complete", "complete"]
    finally:
        other.close()


def test_the_wait_is_documented(
    store: Store, project: tuple[str, str], served: Callable[..., tuple[Server, threading.Event]]
) -> None:
    server, _ = served()
    document = server.client.get(f"{server.root}/openapi.json").json()
    (parameter,) = [
        p
        for p in document["paths"]["/2/projects/{project_id}/tasks/{task_id}"]["get"]["parameters"]
        if p["name"] == "wait"
    ]
    assert parameter["in"] == "query"
    schema = parameter["schema"]["anyOf"][0]
    assert schema["maximum"] == tasks.MAX_WAIT_S and schema["minimum"] == 0
    assert "instead of polling" in parameter["description"]


def test_a_task_still_queued_after_the_wait_says_why(
    store: Store, project: tuple[str, str], served: Callable[..., tuple[Server, threading.Event]]
) -> None:
    server, _ = served()
    task_id = queue(store, project[0], "w").id
    answer = server.get(f"/tasks/{task_id}", wait=0.2).json()
    assert answer["status"] == "queued"
    assert answer["msg"] == "waiting: no runner serves cluster 'default'"
