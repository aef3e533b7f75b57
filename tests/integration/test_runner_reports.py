"""Reports on the real engine and both stores: a failed final report is retried, never the
work; the log cap holds across attempts."""

from __future__ import annotations

import pytest

from dockworker.models import CodeSpec
from dockworker.settings import Limits, Settings
from dockworker.states import EventKind, TaskStatus
from dockworker.store import Store
from tests.conftest import StartRunner
from tests.helpers import queue, save_code, wait_for

pytestmark = [pytest.mark.docker, pytest.mark.dialects("sqlite", "postgresql")]


def test_a_failed_final_report_is_retried_and_the_task_runs_once(
    store: Store, settings: Settings, start_runner: StartRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = store.create_project("p").id
    save_code(store, project, CodeSpec(name="once", stack="busybox", command="echo ran"))
    real_finish = store.finish
    failures = [ConnectionError("the store went away")] * 3

    def flaky_finish(*args: object) -> bool:
        if failures:
            raise failures.pop()
        return real_finish(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(store, "finish", flaky_finish)
    start_runner()
    task = queue(store, project, "once")
    done = wait_for(store, task.id, timeout=30)
    assert done.status is TaskStatus.COMPLETE and failures == []
    assert done.attempts == 1 and done.infra_attempts == 0
    assert store.read_log(task.id) == b"ran\n"
    kinds = [e.kind for e in store.list_events(task.id)]
    assert kinds.count(EventKind.STARTED) == 1 and EventKind.LATE_REPORT_REFUSED not in kinds, kinds


def test_the_log_cap_counts_what_earlier_attempts_wrote(
    store: Store, settings: Settings, start_runner: StartRunner
) -> None:
    project = store.create_project("p").id
    command = "sh -c 'yes flood | head -c 100000; echo'"
    save_code(store, project, CodeSpec(name="flood", stack="busybox", command=command))
    task = queue(store, project, "flood")
    store.append_log(task.id, b"e" * 9000)  # as an earlier attempt would have left it
    start_runner(settings.replace(limits=Limits(memory_mb=128, log_bytes=10_000)))
    done = wait_for(store, task.id, timeout=30)
    log = store.read_log(task.id)
    assert done.status is TaskStatus.COMPLETE, done.msg
    assert log.startswith(b"e" * 9000)
    assert log.endswith(b"[dockworker: log truncated at 10000 bytes]\n")
    assert len(log) < 10_200
