"""``Store.on_task_end``: every way a task reaches a terminal state is announced once committed,
nothing else is; on PostgreSQL another store (another process) hears of it too."""

from __future__ import annotations

import threading
import time
from collections.abc import Collection

import pytest

from dockworker.models import CodeSpec, TaskOutcome
from dockworker.states import TaskStatus
from dockworker.store import Store, open_store
from tests.helpers import queue, save_code

pytestmark = pytest.mark.timeout(60)

RUNNER = "r1"


class Heard:
    def __init__(self) -> None:
        self.ends: list[Collection[str] | None] = []
        self.changed = threading.Condition()

    def __call__(self, task_ids: Collection[str] | None) -> None:
        with self.changed:
            self.ends.append(None if task_ids is None else sorted(task_ids))
            self.changed.notify_all()

    def until(self, expected: Collection[str] | None, timeout: float = 10) -> None:
        wanted = None if expected is None else sorted(expected)
        with self.changed:
            assert self.changed.wait_for(lambda: wanted in self.ends, timeout), self.ends


@pytest.fixture
def project(store: Store) -> str:
    project = store.create_project("p")
    save_code(store, project.id, CodeSpec(name="w", stack="busybox", command="true"), {"w.sh": ""})
    return project.id


def _running(store: Store, project: str) -> str:
    task = queue(store, project, "w")
    claimed = store.claim(RUNNER, ["default"], 60)
    assert claimed is not None and claimed.id == task.id
    assert store.mark_running(task.id, RUNNER, time.time())
    return task.id


def test_each_way_to_an_end_is_announced(store: Store, project: str) -> None:
    heard = Heard()
    unsubscribe = store.on_task_end(heard)
    finished = _running(store, project)
    assert store.finish(finished, RUNNER, TaskOutcome(status=TaskStatus.COMPLETE, msg="", exit_code=0))
    heard.until([finished])

    cancelled = queue(store, project, "w").id
    store.request_cancel(project, cancelled)
    heard.until([cancelled])

    gave_up = _running(store, project)
    assert store.requeue_after_infra_failure(gave_up, RUNNER, "engine gone", budget=0, delay=0) is not None
    heard.until([gave_up])

    expired = queue(store, project, "w").id
    assert store.claim(RUNNER, ["default"], -1) is not None  # its lease has already run out
    assert [t.id for t in store.expire_leases(budget=0, delay=0)] == [expired]
    heard.until([expired])

    queue(store, project, "w")
    code = store.find_code(project, "w")
    assert code is not None
    assert store.cancel_all(project, code.id) == (1, 0)
    heard.until(None)  # a bulk cancel names no task: every waiter looks again

    count = len(heard.ends)
    unsubscribe()
    store.finish(_running(store, project), RUNNER, TaskOutcome(status=TaskStatus.COMPLETE, msg=""))
    assert len(heard.ends) == count


def test_what_is_not_an_end_is_not_announced(store: Store, project: str, dialect: str) -> None:
    heard = Heard()
    store.on_task_end(heard)
    if dialect == "postgresql":
        heard.until(None)  # its listener connected: notifications missed meanwhile may be anything
        heard.ends.clear()
    task_id = _running(store, project)
    store.append_log(task_id, b"x")
    store.request_cancel(project, task_id)  # a request, not an end
    retried = _running(store, project)
    store.requeue_after_infra_failure(retried, RUNNER, "blip", budget=5, delay=0)  # queued again
    assert not store.finish(task_id, "another runner", TaskOutcome(status=TaskStatus.COMPLETE, msg=""))
    time.sleep(0.3)  # a NOTIFY on its way would have arrived
    assert heard.ends == []


@pytest.mark.dialects("postgresql")
def test_another_store_hears_of_the_end(store: Store, store_url: str, project: str) -> None:
    other = open_store(store_url)
    try:
        heard = Heard()
        other.on_task_end(heard)
        heard.until(None)  # its listener is connected (it announces "anything" on connecting)
        task_id = _running(store, project)
        assert store.finish(task_id, RUNNER, TaskOutcome(status=TaskStatus.ERROR, msg="x", exit_code=1))
        heard.until([task_id])
    finally:
        other.close()
