"""Runner on the in-memory engine and a real SQLite store: claiming, reconciliation after a
restart, the reaper, holds on claiming (engine, disk, identity), shutdown."""

from __future__ import annotations

import errno
import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dockworker.engine import ContainerSpec
from dockworker.errors import AlreadyRunning, EngineUnavailable
from dockworker.runner import Runner
from dockworker.runner import runner as runner_module
from dockworker.states import TaskStatus
from tests.fake_engine import Harness, Script
from tests.helpers import queue, wait_for


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(tmp_path)
    harness.code()
    yield harness
    harness.close()


class Started:
    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self.stop = threading.Event()
        self.thread = threading.Thread(target=runner.run, args=(self.stop,), daemon=True)
        self.thread.start()

    def halt(self) -> None:
        self.stop.set()
        self.runner.wake()
        self.thread.join(30)
        assert not self.thread.is_alive(), "runner did not stop"


@pytest.fixture
def start(h: Harness) -> Iterator[Callable[..., Started]]:
    started: list[Started] = []

    def run(**kwargs: object) -> Started:
        item = Started(Runner(h.settings, h.store, h.engine, **kwargs))  # type: ignore[arg-type]
        started.append(item)
        return item

    yield run
    for item in started:
        item.halt()


def _labels(h: Harness, task_id: str, runner_id: str | None = None) -> dict[str, str]:
    return {
        "dockworker.task": task_id,
        "dockworker.runner": runner_id or h.context.runner_id,
        "dockworker.installation": h.context.installation_id,
    }


def test_queued_tasks_run_to_completion_in_slots(h: Harness, start: Callable[..., Started]) -> None:
    release = threading.Event()
    h.engine.default(Script(output=[b"hi\n"], release=release))
    tasks = [queue(h.store, h.project, "hello") for _ in range(3)]
    start()
    h.engine.wait_until(lambda: sum(1 for c in h.engine.containers.values() if c.started_at) == 2)
    assert h.store.load_task(tasks[2].id).status is TaskStatus.QUEUED  # two slots
    release.set()
    for task in tasks:
        assert wait_for(h.store, task.id, timeout=10).status is TaskStatus.COMPLETE
    assert h.engine.containers == {}


def test_a_restarted_runner_readopts_its_running_container_and_requeues_the_rest(
    h: Harness, start: Callable[..., Started]
) -> None:
    followed = h.claimed()
    assert h.store.mark_running(followed.id, h.context.runner_id, 1.0, "c")
    never_started = h.claimed()
    release = threading.Event()
    container = h.engine.adopt_running(
        ContainerSpec(image=next(iter(h.engine.images)), command=[], labels=_labels(h, followed.id)),
        Script(output=[b"still here\n"], release=release),
    )
    start()
    h.engine.wait_until(lambda: "follow_logs" in h.engine.calls)
    assert h.engine.containers[container].exit is None
    release.set()
    done = wait_for(h.store, followed.id, timeout=10)
    assert done.status is TaskStatus.COMPLETE and done.attempts == 1
    assert h.store.read_log(followed.id) == b"still here\n"
    requeued = h.store.load_task(never_started.id)
    assert requeued.infra_attempts == 1
    assert "restarted before" in next(
        e.detail for e in h.store.list_events(never_started.id) if e.kind == "infra_retry"
    )


def test_a_start_the_earlier_process_never_reported_is_recorded_and_followed(
    h: Harness, start: Callable[..., Started]
) -> None:
    task = h.claimed()  # preparing: the earlier process died between start and report
    h.engine.adopt_running(
        ContainerSpec(image=next(iter(h.engine.images)), command=[], labels=_labels(h, task.id)),
        Script(output=[b"early\n"]),
    )
    start()
    done = wait_for(h.store, task.id, timeout=10)
    assert done.status is TaskStatus.COMPLETE and done.attempts == 1
    assert "readopted" in h.kinds(task.id)


def test_the_reaper_removes_orphans_of_this_installation_only(
    h: Harness, start: Callable[..., Started]
) -> None:
    image = next(iter(h.engine.images))
    orphan = h.engine.adopt_running(
        ContainerSpec(image=image, command=[], labels=_labels(h, "0" * 24, "someone-else")),
        Script(release=threading.Event()),
    )
    foreign_labels = {**_labels(h, "1" * 24), "dockworker.installation": "another"}
    foreign = h.engine.adopt_running(
        ContainerSpec(image=image, command=[], labels=foreign_labels), Script(release=threading.Event())
    )
    started = start()
    h.engine.wait_until(lambda: orphan not in h.engine.containers)
    assert foreign in h.engine.containers
    assert started.runner.reap_orphans() == 0


def test_a_failed_reap_says_which_container_and_why(
    h: Harness, start: Callable[..., Started], caplog: pytest.LogCaptureFixture
) -> None:
    orphan = h.engine.adopt_running(
        ContainerSpec(image=next(iter(h.engine.images)), command=[], labels=_labels(h, "0" * 24)),
        Script(release=threading.Event()),
    )
    h.engine.fail("remove")
    with caplog.at_level(logging.WARNING):
        started = start()
        h.engine.wait_until(lambda: "remove" in h.engine.calls)
        started.halt()
    (record,) = [r for r in caplog.records if r.getMessage() == "runner.reap_failed"]
    assert record.__dict__["container_id"] == orphan[:12]
    assert record.__dict__["task_id"] == "0" * 24
    assert "injected" in record.__dict__["error"]


def test_claims_stop_while_the_engine_is_unreachable(h: Harness, start: Callable[..., Started]) -> None:
    h.engine.fail("create", EngineUnavailable("create: Docker engine unreachable"))
    h.engine.fail("ping", EngineUnavailable("ping: Docker engine unreachable"), times=2)
    task = queue(h.store, h.project, "hello")
    start()
    done = wait_for(h.store, task.id, timeout=15)
    assert done.status is TaskStatus.COMPLETE and done.infra_attempts == 0
    kinds = h.kinds(task.id)
    assert kinds.count("released") == 1 and kinds.count("claimed") == 2
    assert h.engine.calls.count("ping") >= 3  # pinged until it answered, before claiming again


def test_claims_stop_while_the_host_is_full_and_resume_when_space_is_back(
    h: Harness, start: Callable[..., Started], monkeypatch: pytest.MonkeyPatch
) -> None:
    full = threading.Event()
    full.set()
    probes: list[Path] = []
    real_probe = runner_module._probe_write

    def probe(directory: Path) -> None:
        probes.append(directory)
        if full.is_set():
            raise OSError(errno.ENOSPC, "No space left on device")
        real_probe(directory)

    real_directory_for = h.context.code_cache.directory_for

    def directory_for(revision: object) -> object:
        if full.is_set():
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_directory_for(revision)  # type: ignore[arg-type]

    monkeypatch.setattr(runner_module, "_probe_write", probe)
    started = start()
    monkeypatch.setattr(started.runner._context.code_cache, "directory_for", directory_for)
    task = queue(h.store, h.project, "hello")
    h.engine.wait_until(lambda: len(probes) >= 2)
    held = h.store.load_task(task.id)
    assert held.status is TaskStatus.QUEUED and held.infra_attempts == 0
    assert h.kinds(task.id).count("claimed") == 1
    full.clear()
    done = wait_for(h.store, task.id, timeout=15)
    assert done.status is TaskStatus.COMPLETE and done.infra_attempts == 0


def test_repeated_claim_failures_are_logged_once_with_their_traceback(
    h: Harness,
    start: Callable[..., Started],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[int] = []

    def broken(*args: object, **kwargs: object) -> None:
        calls.append(1)
        raise OSError(errno.ENOSPC, "disk full")

    monkeypatch.setattr(h.store, "claim", broken)
    with caplog.at_level(logging.ERROR):
        started = start()
        h.engine.wait_until(lambda: len(calls) >= 10)
        started.halt()
    logged = [r for r in caplog.records if r.getMessage() == "runner.claim_failed"]
    assert len(logged) == 1 and logged[0].exc_info is not None


def test_a_second_runner_with_the_same_id_is_refused_and_touches_nothing(
    h: Harness, start: Callable[..., Started]
) -> None:
    release = threading.Event()
    h.engine.default(Script(release=release))
    task = queue(h.store, h.project, "hello")
    start()
    wait_for(h.store, task.id, {"running"}, timeout=10)
    second = Runner(h.settings, h.store, h.engine)
    calls_before = list(h.engine.calls)
    with pytest.raises(AlreadyRunning, match="already running"):
        second.run(threading.Event())
    assert h.engine.calls == calls_before
    assert h.store.load_task(task.id).status is TaskStatus.RUNNING
    release.set()
    assert wait_for(h.store, task.id, timeout=10).status is TaskStatus.COMPLETE
    assert h.kinds(task.id).count("late_report_refused") == 0


class Unheld:
    def __init__(self, runner_id: str) -> None:
        self.runner_id = runner_id
        self.holding = threading.Event()

    def held(self) -> bool:
        return self.holding.is_set()

    def release(self) -> None:
        self.holding.clear()


def test_nothing_is_claimed_while_the_identity_is_not_held(h: Harness, start: Callable[..., Started]) -> None:
    identity = Unheld(h.context.runner_id)
    task = queue(h.store, h.project, "hello")
    start(identity=identity)
    h.engine.wait_until(lambda: "list_labelled" in h.engine.calls)  # it started...
    assert h.store.load_task(task.id).status is TaskStatus.QUEUED  # ...and claims nothing
    identity.holding.set()
    assert wait_for(h.store, task.id, timeout=10).status is TaskStatus.COMPLETE


def test_shutdown_lets_tasks_finish_within_the_grace_period_then_hands_them_back(
    h: Harness, start: Callable[..., Started]
) -> None:
    h.engine.default(Script(release=threading.Event()))
    task = queue(h.store, h.project, "hello")
    started = start()
    wait_for(h.store, task.id, {"running"}, timeout=10)
    started.runner.force_stop()
    started.halt()
    done = h.store.load_task(task.id)
    assert done.status is TaskStatus.QUEUED and "shut down" in (done.msg or "")
    assert h.engine.containers == {}


def test_a_lost_lease_stops_the_container(h: Harness, start: Callable[..., Started]) -> None:
    h.engine.default(Script(release=threading.Event()))
    task = queue(h.store, h.project, "hello")
    start()
    wait_for(h.store, task.id, {"running"}, timeout=10)
    first = h.engine.only().id
    code = h.store.find_code(h.project, "hello")
    assert code is not None
    h.store.set_paused(h.project, code.id, True)  # so that this runner does not claim it again
    assert h.store.release(task.id, h.context.runner_id, "taken away")  # as an expiry would
    h.engine.wait_until(lambda: first not in h.engine.containers)
    assert h.engine.removed[0] == first and "kill" in h.engine.calls


def test_a_container_left_while_the_engine_was_away_is_removed_before_the_next_claim(
    h: Harness, start: Callable[..., Started]
) -> None:
    gone = EngineUnavailable("Docker engine unreachable")
    h.engine.program(Script(output=[b"partial\n"], release=threading.Event()), Script())
    h.engine.fail("read", gone)
    h.engine.fail("remove", gone)
    h.engine.fail("ping", gone)
    task = queue(h.store, h.project, "hello")
    start()
    done = wait_for(h.store, task.id, timeout=15)
    assert done.status is TaskStatus.COMPLETE and done.infra_attempts == 0
    assert len(h.engine.removed) == 2, (h.engine.calls, h.kinds(task.id))
    calls = h.engine.calls
    last_ping = len(calls) - 1 - calls[::-1].index("ping")
    after = calls[last_ping:]
    assert after.index("remove") < after.index("create"), calls  # reaped, then claimed again
    assert h.engine.containers == {}


def test_the_reaper_removes_accounting_left_for_tasks_no_longer_active(
    h: Harness, start: Callable[..., Started]
) -> None:
    active = queue(h.store, h.project, "hello")
    assert h.store.claim("another-runner", ["default"], 300) is not None  # active, not this runner's
    installation = h.context.installation_id
    # left by a runner killed between making a task's accounting and removing it
    h.engine.accounting |= {(installation, "0" * 24), (installation, active.id), ("another", "1" * 24)}
    started = start()
    h.engine.wait_until(lambda: (installation, "0" * 24) not in h.engine.accounting)
    started.runner.reap_orphans()
    assert h.engine.accounting == {(installation, active.id), ("another", "1" * 24)}
