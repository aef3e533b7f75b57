"""Queue semantics with real runners on the real engine: priorities, max_concurrency across two
runners, clusters, schedules, pause/resume, cancel before the container starts, webhooks."""

from __future__ import annotations

import itertools
import time

import pytest
from fastapi.testclient import TestClient

from dockworker.api import create_app
from dockworker.engine import DockerEngine
from dockworker.models import CodeSpec, ScheduleSpec, Task, TaskFilter
from dockworker.scheduler import Housekeeper, Scheduler
from dockworker.scheduler.timing import cadence_of
from dockworker.settings import Settings
from dockworker.states import TaskStatus
from dockworker.store import Store
from tests.conftest import StartRunner
from tests.helpers import queue, save_code, wait_for

# The runner's side of the store, so on every dialect.
pytestmark = [pytest.mark.docker, pytest.mark.dialects("sqlite", "postgresql")]


@pytest.fixture
def project(store: Store) -> str:
    return store.create_project("test").id


def _code_id(store: Store, project: str, name: str) -> str:
    code = store.find_code(project, name)
    assert code is not None
    return code.id


def test_one_slot_runs_by_priority_then_fifo(
    store: Store, project: str, settings: Settings, start_runner: StartRunner
) -> None:
    save_code(store, project, CodeSpec(name="p", stack="busybox", command="true"))
    store.set_paused(project, _code_id(store, project, "p"), True)
    tasks = [queue(store, project, "p", priority=p) for p in (0, 2, 1, 2, 0, 1)]
    start_runner(settings.replace(slots=1))
    store.set_paused(project, _code_id(store, project, "p"), False)
    done = [wait_for(store, t.id) for t in tasks]
    ran = [t.id for t in sorted(done, key=lambda t: t.start_time or 0)]
    expected = [t.id for t in sorted(tasks, key=lambda t: (-t.priority, t.created_at, t.id))]
    assert ran == expected


def test_max_concurrency_holds_across_two_runners(
    store: Store, project: str, settings: Settings, start_runner: StartRunner
) -> None:
    save_code(store, project, CodeSpec(name="one", stack="busybox", command="sleep 0.5", max_concurrency=1))
    tasks = [queue(store, project, "one") for _ in range(4)]
    start_runner(settings.replace(runner_id=f"{settings.runner_id}-a", slots=2))
    start_runner(settings.replace(runner_id=f"{settings.runner_id}-b", slots=2))
    done = sorted((wait_for(store, t.id, timeout=60) for t in tasks), key=lambda t: t.start_time or 0)
    assert all(t.status is TaskStatus.COMPLETE for t in done)
    for earlier, later in itertools.pairwise(done):
        assert earlier.end_time is not None and later.start_time is not None
        assert later.start_time >= earlier.end_time - 0.05, "two tasks of the package overlapped"


def test_clusters_route_tasks_to_their_runners(
    store: Store, project: str, settings: Settings, start_runner: StartRunner
) -> None:
    save_code(store, project, CodeSpec(name="c", stack="busybox", command="true"))
    gpu_runner = start_runner(settings.replace(runner_id=f"{settings.runner_id}-gpu", clusters=("gpu",)))
    default_runner = start_runner(settings.replace(runner_id=f"{settings.runner_id}-default"))
    gpu_tasks = [queue(store, project, "c", cluster="gpu") for _ in range(3)]
    default_tasks = [queue(store, project, "c") for _ in range(3)]
    orphan = queue(store, project, "c", cluster="nobody")
    for task in gpu_tasks:
        assert wait_for(store, task.id).runner_id == gpu_runner.runner_id
    for task in default_tasks:
        assert wait_for(store, task.id).runner_id == default_runner.runner_id
    time.sleep(0.5)
    assert store.load_task(orphan.id).status is TaskStatus.QUEUED


def test_schedule_fires_into_a_runner(
    store: Store, project: str, settings: Settings, start_runner: StartRunner
) -> None:
    save_code(store, project, CodeSpec(name="tick", stack="busybox", command="sh -c 'cat $PAYLOAD_FILE'"))
    start_runner()
    (schedule,) = store.create_schedules(
        project,
        [ScheduleSpec(code_name="tick", payload="tock", start_at=time.time(), run_every=1, run_times=3)],
        cadence_of,
    )
    scheduler = Scheduler(settings, store)
    deadline = time.time() + 10
    while store.get_schedule(project, schedule.id).status == "scheduled" and time.time() < deadline:
        scheduler.tick()
        time.sleep(0.1)
    fired = store.list_tasks(project, TaskFilter(schedule_id=schedule.id))
    assert len(fired) == 3
    for task in fired:
        done = wait_for(store, task.id)
        assert done.status is TaskStatus.COMPLETE and store.read_log(task.id) == b"tock"


def test_pause_holds_tasks_until_resume(store: Store, project: str, start_runner: StartRunner) -> None:
    save_code(store, project, CodeSpec(name="held", stack="busybox", command="true"))
    code_id = _code_id(store, project, "held")
    store.set_paused(project, code_id, True)
    start_runner()
    task = queue(store, project, "held")
    time.sleep(1.0)
    assert store.load_task(task.id).status is TaskStatus.QUEUED
    store.set_paused(project, code_id, False)
    assert wait_for(store, task.id).status is TaskStatus.COMPLETE


def test_cancel_of_a_claimed_task_whose_runner_died(store: Store, project: str, settings: Settings) -> None:
    save_code(store, project, CodeSpec(name="c", stack="busybox", command="true"))
    task = queue(store, project, "c")
    claimed = store.claim("dead-runner", ["default"], lease_ttl=0.2)
    assert claimed is not None and claimed.status is TaskStatus.PREPARING
    store.request_cancel(project, task.id)
    time.sleep(0.3)
    Housekeeper(settings, store).tick()
    final = store.load_task(task.id)
    assert final.status is TaskStatus.CANCELLED and final.msg == "cancelled by user"


def test_webhook_payload_reaches_the_worker(
    store: Store, project: str, settings: Settings, start_runner: StartRunner, engine: DockerEngine
) -> None:
    save_code(store, project, CodeSpec(name="hook", stack="busybox", command="sh -c 'cat $PAYLOAD_FILE'"))
    runner = start_runner()
    token, _ = store.create_token(project, "t")
    with TestClient(create_app(settings, store, on_enqueue=runner.wake)) as client:
        response = client.post(
            f"/2/projects/{project}/tasks/webhook?code_name=hook",
            content=b'{"ref": "main"}',
            headers={"Authorization": f"OAuth {token}"},
        )
    assert response.status_code == 200, response.text
    task: Task = wait_for(store, response.json()["id"])
    assert task.status is TaskStatus.COMPLETE
    assert store.read_log(task.id) == b'{"ref": "main"}'
