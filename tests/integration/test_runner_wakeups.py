"""An idle runner claims new work at once, not at its next poll: woken in-process by the API or
the scheduler on every dialect, and by the database's NOTIFY when another process (another host)
queues the task on PostgreSQL."""

from __future__ import annotations

import time

import pytest

from dockworker.models import CodeSpec
from dockworker.settings import Settings
from dockworker.states import TaskStatus
from dockworker.store import Store, open_store
from tests.conftest import StartRunner
from tests.helpers import queue, save_code, wait_for

pytestmark = pytest.mark.docker

# Far longer than any latency accepted below: a claim within it was woken, not polled.
SLOW_POLL_S = 5.0


@pytest.fixture
def project(store: Store) -> str:
    project = store.create_project("p").id
    save_code(store, project, CodeSpec(name="c", stack="busybox", command="true"))
    return project


def _claim_latency(store: Store, task_id: str, queued_at: float) -> float:
    task = wait_for(store, task_id)
    assert task.status is TaskStatus.COMPLETE, task.msg
    (claimed,) = [e for e in store.list_events(task_id) if e.kind == "claimed"]
    return claimed.at - queued_at


@pytest.mark.dialects("sqlite", "postgresql")
def test_an_idle_runner_woken_in_process_claims_at_once(
    store: Store, project: str, settings: Settings, start_runner: StartRunner, dialect: str
) -> None:
    runner = start_runner(settings.replace(poll_interval_s=SLOW_POLL_S))
    time.sleep(0.5)  # idle: its first claims found nothing
    task = queue(store, project, "c")
    queued_at = time.time()
    runner.wake()
    latency = _claim_latency(store, task.id, queued_at)
    print(f"{dialect}: queued to claimed, woken in-process: {1000 * latency:.1f} ms")
    assert latency < 0.25


@pytest.mark.dialects("postgresql")
def test_an_idle_runner_claims_at_once_a_task_queued_by_another_process(
    store: Store, project: str, settings: Settings, start_runner: StartRunner, store_url: str
) -> None:
    start_runner(settings.replace(poll_interval_s=SLOW_POLL_S))
    time.sleep(0.5)
    elsewhere = open_store(store_url)  # its own engine and pool: nothing shared in-process
    try:
        task = queue(elsewhere, project, "c")
        queued_at = time.time()
    finally:
        elsewhere.close()
    latency = _claim_latency(store, task.id, queued_at)
    print(f"postgresql: queued by another process to claimed, by NOTIFY: {1000 * latency:.1f} ms")
    assert latency < 0.25
