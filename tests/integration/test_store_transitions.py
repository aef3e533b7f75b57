"""The state table is what the store writes by, on every dialect: an illegal transition cannot be
written, whichever method tries it. Event kinds and the container an event is about."""

from __future__ import annotations

import itertools
import threading
import time
from pathlib import Path

import pytest

import dockworker.store.postgres
import dockworker.store.sqlite
from dockworker.models import CodeSpec, TaskOutcome
from dockworker.states import TRANSITIONS, EventKind, TaskStatus, sources_of
from dockworker.store import Store
from dockworker.store.schema import tasks
from dockworker.store.sql import SqlStore
from dockworker.store.transitions import claim_sql, transition
from tests.helpers import queue, save_code


@pytest.fixture
def project(store: Store) -> str:
    project = store.create_project("p").id
    save_code(store, project, CodeSpec(name="c", stack="busybox", command="true"))
    return project


def _force(store: Store, task_id: str, status: TaskStatus, runner_id: str | None = "r") -> None:
    """Put the task in a state directly (the test's arrangement, not a transition)."""
    assert isinstance(store, SqlStore)
    with store.engine.begin() as conn:
        conn.execute(
            tasks.update().where(tasks.c.id == task_id).values(status=status.value, runner_id=runner_id)
        )


@pytest.mark.parametrize("current", list(TaskStatus))
def test_a_move_is_written_only_if_the_table_lists_it(
    store: Store, project: str, current: TaskStatus
) -> None:
    assert isinstance(store, SqlStore)
    for target in TaskStatus:
        task = queue(store, project, "c")
        _force(store, task.id, current)
        with store.engine.begin() as conn:
            moved = transition(conn, target, tasks.c.id == task.id)
        assert moved == (target in TRANSITIONS[current]), (current, target)
        expected = target if target in TRANSITIONS[current] else current
        assert store.load_task(task.id).status is expected


def test_complete_or_killed_from_preparing_is_refused(store: Store, project: str) -> None:
    for status in (TaskStatus.COMPLETE, TaskStatus.KILLED, TaskStatus.TIMEOUT):
        task = queue(store, project, "c")
        claimed = store.claim("r", ["default"], 30)
        assert claimed is not None and claimed.id == task.id
        assert not store.finish(task.id, "r", TaskOutcome(status=status, msg="", exit_code=0))
        after = store.load_task(task.id)
        assert after.status is TaskStatus.PREPARING and after.end_time is None
        assert [e.kind for e in store.list_events(task.id)][-1] is EventKind.LATE_REPORT_REFUSED
        assert store.finish(task.id, "r", TaskOutcome(status=TaskStatus.ERROR, msg="setup failed"))


def test_running_twice_and_terminal_to_anything_are_refused(store: Store, project: str) -> None:
    task = queue(store, project, "c")
    store.claim("r", ["default"], 30)
    assert store.mark_running(task.id, "r", time.time(), "a" * 64)
    assert not store.mark_running(task.id, "r", time.time(), "a" * 64)
    assert store.finish(task.id, "r", TaskOutcome(status=TaskStatus.COMPLETE, msg="", exit_code=0))
    _force(store, task.id, TaskStatus.COMPLETE)  # its runner still named
    assert store.requeue_after_infra_failure(task.id, "r", "engine down", 5, 0) is None
    assert not store.release(task.id, "r", "engine down")
    assert store.load_task(task.id).status is TaskStatus.COMPLETE


def test_the_claim_statements_take_their_states_from_the_table() -> None:
    claimable, active = claim_sql("t")
    assert claimable == "t.status = 'queued'" and sources_of(TaskStatus.PREPARING) == {TaskStatus.QUEUED}
    assert active == "t.status IN ('preparing', 'running')"
    for module in (dockworker.store.sqlite, dockworker.store.postgres):
        assert claimable in module.CLAIM.text and active in module.CLAIM.text
        source = Path(module.__file__ or "").read_text()
        for status in TaskStatus:
            assert f"'{status.value}'" not in source, (module.__name__, status)


def test_events_have_kinds_and_container_ids(store: Store, project: str) -> None:
    task = queue(store, project, "c")
    store.claim("r", ["default"], 30)
    container = "c0ffee" * 10 + "abcd"
    store.add_event(task.id, EventKind.CONTAINER_CREATED, container[:12], container)
    assert store.mark_running(task.id, "r", time.time(), container)
    events = store.list_events(task.id)
    assert [e.kind for e in events] == [
        EventKind.QUEUED,
        EventKind.CLAIMED,
        EventKind.CONTAINER_CREATED,
        EventKind.STARTED,
    ]
    assert [e.container_id for e in events] == [None, None, container, container]


def test_an_unreported_start_is_found_by_the_container_id_not_by_text(store: Store, project: str) -> None:
    task = queue(store, project, "c")
    store.claim("r", ["default"], 30)
    reported, unreported, texted = ("1" * 64), ("2" * 64), ("3" * 64)
    assert store.mark_running(task.id, "r", time.time(), reported)
    assert not store.record_unreported_start(task.id, reported, "r")
    # An event whose text names a container is not that container's start.
    store.add_event(task.id, EventKind.STARTED, f"container {texted[:12]} started by runner r")
    assert store.record_unreported_start(task.id, texted, "r")
    assert store.record_unreported_start(task.id, unreported, "r2")
    assert not store.record_unreported_start(task.id, unreported, "r2")
    assert store.load_task(task.id).attempts == 3


def test_an_unreported_start_found_by_two_at_once_is_counted_once(store: Store, project: str) -> None:
    """A reaper and a task's own clean-up can find the same container at the same moment."""
    task = queue(store, project, "c")
    store.claim("r", ["default"], 30)
    containers = [f"{n:064x}" for n in range(1, 21)]
    callers = 4
    counted: list[bool] = []

    def count(container: str, ready: threading.Barrier) -> None:
        ready.wait(10)
        counted.append(store.record_unreported_start(task.id, container, "r"))

    for container in containers:
        ready = threading.Barrier(callers)
        threads = [threading.Thread(target=count, args=(container, ready)) for _ in range(callers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    assert counted.count(True) == len(containers)
    assert store.load_task(task.id).attempts == len(containers)


def test_every_store_method_that_moves_a_task_keeps_to_the_table(store: Store, project: str) -> None:
    """Drive each writing method from each state; whatever it writes is a listed move."""
    runner = "r"
    moves = {
        "finish complete": lambda t: store.finish(t, runner, TaskOutcome(status=TaskStatus.COMPLETE, msg="")),
        "finish killed": lambda t: store.finish(t, runner, TaskOutcome(status=TaskStatus.KILLED, msg="")),
        "finish error": lambda t: store.finish(t, runner, TaskOutcome(status=TaskStatus.ERROR, msg="")),
        "mark_running": lambda t: store.mark_running(t, runner, time.time()),
        "requeue": lambda t: store.requeue_after_infra_failure(t, runner, "x", 5, 0),
        "release": lambda t: store.release(t, runner, "x"),
    }
    for (name, move), current in itertools.product(moves.items(), TaskStatus):
        task = queue(store, project, "c")
        _force(store, task.id, current, runner)
        move(task.id)
        after = store.load_task(task.id).status
        assert after is current or after in TRANSITIONS[current], (name, current, after)
