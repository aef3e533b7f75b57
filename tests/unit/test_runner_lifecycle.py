"""The order of a task's last steps, on the in-memory engine: the outcome is reported as soon as
the container has ended (its output stored), the container is removed right after and before the
slot takes another task; a runner that dies between the two leaves nothing once the reaper has
run. A task handed back is handed back only once its container is gone. The container's
creation is written with its start; a revision is read once."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dockworker.errors import TaskSetupError
from dockworker.runner import Runner
from dockworker.runner.execution import TaskExecution
from dockworker.states import TaskStatus
from tests.fake_engine import Harness, Script
from tests.helpers import queue, wait_for

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(tmp_path)
    harness.code()
    yield harness
    harness.close()


class HeldRemoval:
    """Replaces the engine's remove: notes the task's status when a removal begins, and holds
    the removals until ``release`` is set; those held never happen if ``dead`` is set first (their
    runner died)."""

    def __init__(self, h: Harness) -> None:
        self.h = h
        self.real = h.engine.remove
        self.release = threading.Event()
        self.dead = threading.Event()
        self.began = threading.Event()
        self.status_then: list[TaskStatus] = []

    def __call__(self, container_id: str) -> None:
        task_id = self.h.engine.containers[container_id].spec.labels["dockworker.task"]
        self.status_then.append(self.h.store.load_task(task_id).status)
        self.began.set()
        assert self.release.wait(30)
        if not self.dead.is_set():
            self.real(container_id)


@pytest.fixture
def held(h: Harness, monkeypatch: pytest.MonkeyPatch) -> Iterator[HeldRemoval]:
    removal = HeldRemoval(h)
    monkeypatch.setattr(h.engine, "remove", removal)
    yield removal
    removal.release.set()


def _until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def test_the_outcome_is_reported_before_the_removal_which_frees_the_slot(
    h: Harness, held: HeldRemoval
) -> None:
    runner = Runner(h.settings.replace(slots=1), h.store, h.engine)
    stop = threading.Event()
    thread = threading.Thread(target=runner.run, args=(stop,), daemon=True)
    thread.start()
    try:
        h.engine.program(Script(output=[b"out\n"]))
        first = queue(h.store, h.project, "hello")
        second = queue(h.store, h.project, "hello")
        runner.wake()
        done = wait_for(h.store, first.id)
        assert done.status is TaskStatus.COMPLETE and h.store.read_log(first.id) == b"out\n"
        assert held.began.wait(10)
        assert held.status_then == [TaskStatus.COMPLETE]
        # The one slot is still taken by the removal: the second task waits for it.
        time.sleep(0.2)
        assert runner.running_task_ids() == {first.id}
        assert h.store.load_task(second.id).status is TaskStatus.QUEUED
        held.release.set()
        assert wait_for(h.store, second.id).status is TaskStatus.COMPLETE
        _until(lambda: not h.engine.containers, "the containers were not removed")
    finally:
        stop.set()
        runner.wake()
        thread.join(30)


def test_a_runner_dead_before_the_removal_leaves_nothing_after_the_reaper(
    h: Harness, held: HeldRemoval
) -> None:
    """The first runner reports, then "dies" (its removal never happens). Restarted (same id),
    its reaper removes the exited container of the finished task."""
    task = h.claimed()
    dying = threading.Thread(target=h.execute, args=(task,), daemon=True)
    dying.start()
    assert held.began.wait(10)
    assert h.store.load_task(task.id).status is TaskStatus.COMPLETE
    (left,) = h.engine.containers
    events = h.kinds(task.id)

    held.dead.set()
    held.release.set()
    dying.join(10)
    assert left in h.engine.containers
    restarted = Runner(h.settings, h.store, h.engine)
    held.dead.clear()
    assert restarted.reap_orphans() == 1
    assert h.engine.containers == {} and left in h.engine.removed
    assert h.store.load_task(task.id).status is TaskStatus.COMPLETE
    assert h.kinds(task.id) == events  # nothing reported again


def test_a_task_handed_back_is_handed_back_once_its_container_is_gone(h: Harness, held: HeldRemoval) -> None:
    h.engine.program(Script(release=threading.Event()))
    task = h.claimed()
    running = TaskExecution(task, h.context)
    execution = threading.Thread(target=running.run, daemon=True)
    execution.start()
    h.engine.wait_until(lambda: any(c.started_at for c in h.engine.containers.values()))
    running.interrupt("the runner shut down before the task finished")
    assert held.began.wait(10)
    assert held.status_then == [TaskStatus.RUNNING]  # not handed back yet
    held.release.set()
    execution.join(10)
    assert h.store.load_task(task.id).status is TaskStatus.QUEUED
    assert h.engine.containers == {}


def test_the_creation_is_written_with_the_start_or_alone_when_the_start_fails(h: Harness) -> None:
    task = h.claimed()
    h.execute(task)
    events = h.store.list_events(task.id)
    assert [e.kind for e in events] == ["queued", "claimed", "container_created", "started", "complete"]
    created, started = events[2], events[3]
    assert created.container_id == started.container_id and created.container_id
    assert created.at <= started.at

    failing = h.claimed()
    h.engine.fail("start", TaskSetupError("start container: exec: nope: executable file not found"))
    h.execute(failing)
    assert h.kinds(failing.id)[-2:] == ["container_created", "error"]


def test_a_revision_is_read_once(h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[str] = []
    real = h.store.get_revision

    def counted(revision_id: str) -> object:
        reads.append(revision_id)
        return real(revision_id)

    monkeypatch.setattr(h.store, "get_revision", counted)
    for _ in range(3):
        h.execute(h.claimed())
    h.code(files={"main.sh": "echo new"})  # a new revision: read once too
    h.execute(h.claimed())
    assert len(reads) == 2 and len(set(reads)) == 2


@pytest.mark.parametrize(("limit", "claims_again"), [(None, False), (1, True)])
def test_an_end_claims_again_at_once_only_for_a_limited_package(
    h: Harness, monkeypatch: pytest.MonkeyPatch, limit: int | None, claims_again: bool
) -> None:
    """A free slot is claimed through at once anyway; an end wakes the idle claim loop only when
    it may have made room in its package (max_concurrency)."""
    h.code(name="limited", max_concurrency=limit)
    runner = Runner(h.settings, h.store, h.engine)
    wakes: list[int] = []
    real = h.store.notify_work

    def counted() -> None:
        wakes.append(1)
        real()

    monkeypatch.setattr(h.store, "notify_work", counted)
    execution = TaskExecution(h.claimed("limited"), runner._context)
    runner._run_execution(execution)
    assert bool(wakes) is claims_again
