"""Queue semantics on the store: ordering, starvation, delays, pause, cancel_all, stats, retry
overrides, and schedules fired with a controllable clock."""

from __future__ import annotations

import random
import threading
import time
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from dockworker.models import CodeSpec, NewTask, ScheduleSpec, TaskFilter, TaskOutcome
from dockworker.scheduler import Scheduler
from dockworker.scheduler.timing import cadence_of
from dockworker.settings import Settings
from dockworker.states import TaskStatus
from dockworker.store import Store, open_store
from tests.helpers import queue, save_code


@pytest.fixture
def project(store: Store) -> str:
    project = store.create_project("p").id
    save_code(store, project, CodeSpec(name="c", stack="busybox", command="true"))
    return project


def drain(store: Store, starvation_s: float = 300.0) -> list[str]:
    claimed = []
    while (task := store.claim("r", ["default"], 30, starvation_s=starvation_s)) is not None:
        claimed.append(task.id)
    return claimed


def test_ordering_under_load_is_priority_then_fifo(store: Store, project: str) -> None:
    rng = random.Random(7)
    priorities = [rng.choice([0, 1, 2]) for _ in range(300)]
    tasks = store.enqueue(project, [NewTask(code_name="c", priority=p, timeout=60) for p in priorities], 3600)
    expected = [t.id for t in sorted(tasks, key=lambda t: (-t.priority, t.created_at, t.id))]
    assert drain(store) == expected


def test_starving_task_goes_ahead_of_newer_high_priority_work(store: Store, project: str) -> None:
    old_low = queue(store, project, "c", priority=0)
    time.sleep(0.3)
    new_high = queue(store, project, "c", priority=2)
    assert drain(store, starvation_s=0.2) == [old_low.id, new_high.id]


def test_without_starvation_priority_wins(store: Store, project: str) -> None:
    old_low = queue(store, project, "c", priority=0)
    new_high = queue(store, project, "c", priority=2)
    assert drain(store, starvation_s=300) == [new_high.id, old_low.id]


def test_delayed_task_becomes_runnable_on_time(store: Store, project: str) -> None:
    """Not claimable before its run_at, claimable from then on (how soon after is a matter of
    the runner's polling, measured in bench/, not asserted here)."""
    task = queue(store, project, "c", delay=1)
    while time.time() < task.run_at - 0.05:
        assert store.claim("r", ["default"], 30) is None
        time.sleep(0.01)
    deadline = time.monotonic() + 30
    claimed = None
    while claimed is None and time.monotonic() < deadline:
        claimed = store.claim("r", ["default"], 30)
        time.sleep(0.01)
    assert claimed is not None and claimed.id == task.id
    assert time.time() >= task.run_at


def test_paused_queue_keeps_tasks_until_resumed(store: Store, project: str) -> None:
    code = store.find_code(project, "c")
    assert code is not None
    assert store.set_paused(project, code.id, True)
    assert not store.set_paused(project, code.id, True)
    task = queue(store, project, "c")
    assert store.claim("r", ["default"], 30) is None
    assert store.load_task(task.id).status is TaskStatus.QUEUED
    assert store.set_paused(project, code.id, False)
    claimed = store.claim("r", ["default"], 30)
    assert claimed is not None and claimed.id == task.id


def test_cancel_all(store: Store, project: str) -> None:
    code = store.find_code(project, "c")
    assert code is not None
    running = queue(store, project, "c")
    store.claim("r", ["default"], 30)
    queued = [queue(store, project, "c") for _ in range(3)]
    assert store.cancel_all(project, code.id) == (3, 1)
    assert all(store.load_task(t.id).status is TaskStatus.CANCELLED for t in queued)
    assert store.cancel_requested("r") == {running.id}


def test_code_stats_window(store: Store, project: str) -> None:
    code = store.find_code(project, "c")
    assert code is not None
    done = queue(store, project, "c")
    queue(store, project, "c")
    store.claim("r", ["default"], 30)
    store.mark_running(done.id, "r", time.time())
    store.finish(done.id, "r", TaskOutcome(status=TaskStatus.COMPLETE, msg=""))
    now = time.time()
    stats = store.code_stats(project, code.id, now - 60, now + 1)
    assert stats["complete"] == 1 and stats["queued"] == 1 and stats["error"] == 0
    assert sum(store.code_stats(project, code.id, now + 10, now + 20).values()) == 0


def test_per_task_retry_override_and_the_chain(store: Store, project: str) -> None:
    first = queue(store, project, "c", retries=1, retries_delay=0)
    for _ in range(2):
        task = store.claim("r", ["default"], 30)
        assert task is not None
        store.finish(task.id, "r", TaskOutcome(status=TaskStatus.ERROR, msg="exit code 1", exit_code=1))
    chain = store.list_tasks(project, TaskFilter(original_task_id=first.id))
    assert sorted(t.retry_count for t in chain) == [0, 1]
    assert store.claim("r", ["default"], 30) is None  # only one retry, despite the package's 0


# --- schedules ----------------------------------------------------------------------------------


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def scheduler(settings: Settings, store: Store, clock: Clock) -> Scheduler:
    return Scheduler(settings, store, clock=clock)


def test_run_every_with_run_times(store: Store, project: str, settings: Settings) -> None:
    clock = Clock(10_000.0)
    (schedule,) = store.create_schedules(
        project,
        [ScheduleSpec(code_name="c", payload="p", start_at=10_000.0, run_every=60, run_times=3)],
        cadence_of,
    )
    tick = scheduler(settings, store, clock).tick
    assert len(tick()) == 1
    assert tick() == []
    clock.now += 59
    assert tick() == []
    for _ in range(2):
        clock.now += 60
        assert len(tick()) == 1
    clock.now += 600
    assert tick() == []
    final = store.get_schedule(project, schedule.id)
    assert final.status == "complete" and final.run_count == 3 and final.next_start is None
    tasks = store.list_tasks(project, TaskFilter(schedule_id=schedule.id))
    assert len(tasks) == 3 and all(t.payload == "p" and t.schedule_id == schedule.id for t in tasks)


def test_after_downtime_missed_slots_fire_once(store: Store, project: str, settings: Settings) -> None:
    clock = Clock(0.0)
    (schedule,) = store.create_schedules(
        project, [ScheduleSpec(code_name="c", start_at=0.0, run_every=60)], cadence_of
    )
    tick = scheduler(settings, store, clock).tick
    assert len(tick()) == 1
    clock.now = 3600 + 30  # an hour down: 60 slots missed
    assert len(tick()) == 1
    assert tick() == []
    current = store.get_schedule(project, schedule.id)
    assert current.run_count == 2 and current.next_start == 3660.0


def test_end_at_stops_a_schedule(store: Store, project: str, settings: Settings) -> None:
    clock = Clock(0.0)
    (schedule,) = store.create_schedules(
        project,
        [ScheduleSpec(code_name="c", start_at=0.0, run_every=60, end_at=130.0)],
        cadence_of,
    )
    tick = scheduler(settings, store, clock).tick
    for moment in (0.0, 60.0, 120.0, 180.0):
        clock.now = moment
        tick()
    assert store.get_schedule(project, schedule.id).run_count == 3
    assert store.get_schedule(project, schedule.id).status == "complete"


def test_cron_schedule_across_a_dst_change(store: Store, project: str, settings: Settings) -> None:
    riga = ZoneInfo("Europe/Riga")
    start = datetime(2026, 3, 28, 0, 0, tzinfo=riga).timestamp()
    spec = ScheduleSpec(code_name="c", start_at=start, cron="30 3 * * *", timezone="Europe/Riga")
    (schedule,) = store.create_schedules(project, [spec], cadence_of)
    clock = Clock(start)
    tick = scheduler(settings, store, clock).tick
    fired_at = []
    for _ in range(4 * 24 * 12):  # every 5 minutes for four days
        clock.now += 300
        if tick():
            fired_at.append(datetime.fromtimestamp(clock.now, riga).strftime("%m-%d %H:%M%z"))
    assert fired_at == ["03-28 03:30+0200", "03-29 04:00+0300", "03-30 03:30+0300", "03-31 03:30+0300"]
    assert store.get_schedule(project, schedule.id).run_count == 4


def test_paused_package_still_receives_scheduled_tasks(
    store: Store, project: str, settings: Settings
) -> None:
    code = store.find_code(project, "c")
    assert code is not None
    store.set_paused(project, code.id, True)
    store.create_schedules(project, [ScheduleSpec(code_name="c", start_at=0.0, run_every=60)], cadence_of)
    assert len(scheduler(settings, store, Clock(1.0)).tick()) == 1
    assert store.claim("r", ["default"], 30) is None


def test_cancelled_schedule_never_fires(store: Store, project: str, settings: Settings) -> None:
    (schedule,) = store.create_schedules(
        project, [ScheduleSpec(code_name="c", start_at=0.0, run_every=60)], cadence_of
    )
    store.cancel_schedule(project, schedule.id)
    assert scheduler(settings, store, Clock(100.0)).tick() == []


def test_two_schedulers_fire_each_slot_once(store: Store, project: str, settings: Settings) -> None:
    specs = [ScheduleSpec(code_name="c", start_at=0.0, run_every=60) for _ in range(20)]
    created = store.create_schedules(project, specs, cadence_of)
    other_store = open_store(settings.database_url)
    clock = Clock(0.0)
    schedulers = [scheduler(settings, store, clock), scheduler(settings, other_store, clock)]
    fired: list[str] = []
    lock = threading.Lock()

    def run(s: Scheduler) -> None:
        for _ in range(5):
            got = s.tick()
            with lock:
                fired.extend(got)

    for moment in (0.0, 60.0, 120.0):
        clock.now = moment
        threads = [threading.Thread(target=run, args=(s,)) for s in schedulers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    other_store.close()
    assert len(fired) == len(set(fired)) == 60
    for schedule in created:
        assert len(store.list_tasks(project, TaskFilter(schedule_id=schedule.id))) == 3
