"""The store's queries for the HUD and /metrics (analytics_sql.py), on every dialect."""

from __future__ import annotations

import hashlib
import time

import pytest

from dockworker.errors import NotFound
from dockworker.models import CodeSpec, ScheduleSpec, TaskOutcome
from dockworker.scheduler.timing import cadence_of
from dockworker.states import TaskStatus
from dockworker.store import Store, open_store
from dockworker.store.schema import tasks
from tests.helpers import make_zip, queue

DAY = 86400


def _code(store: Store, project_id: str, name: str = "hello", **spec: object) -> str:
    archive = make_zip({"run.sh": "echo hi"})
    code = store.save_code(
        project_id,
        CodeSpec(name=name, stack="busybox", command="sh run.sh", **spec),  # type: ignore[arg-type]
        archive,
        hashlib.sha256(archive).hexdigest(),
    )
    return code.id


def _run(
    store: Store,
    task_id: str,
    status: TaskStatus,
    seconds: float = 2.0,
    cpu_time_ms: int | None = None,
    peak_memory_bytes: int | None = None,
) -> None:
    """Claim, start and end the task as a runner would, then set its start ``seconds`` before
    its end (the store writes times with the clock; the test fixes them)."""
    claimed = store.claim("runner-1", ["default", "gpu"], 30)
    assert claimed is not None and claimed.id == task_id
    assert store.mark_running(task_id, "runner-1", time.time())
    outcome = TaskOutcome(
        status=status, msg=str(status), cpu_time_ms=cpu_time_ms, peak_memory_bytes=peak_memory_bytes
    )
    assert store.finish(task_id, "runner-1", outcome)
    with store.engine.begin() as conn:  # type: ignore[attr-defined]
        conn.execute(
            tasks.update().where(tasks.c.id == task_id).values(start_time=tasks.c.end_time - seconds)
        )


def _set_created(store: Store, task_id: str, created_at: float) -> None:
    with store.engine.begin() as conn:  # type: ignore[attr-defined]
        conn.execute(tasks.update().where(tasks.c.id == task_id).values(created_at=created_at))


def test_hud_secret_is_made_once_and_shared_by_all_stores_of_a_database(store: Store, store_url: str) -> None:
    first = store.hud_secret()
    other = open_store(store_url)
    try:
        assert other.hud_secret() == first and len(first) == 64
    finally:
        other.close()
    assert store.installation_id() != first


def test_ended_sessions_are_remembered_until_they_expire_then_purged(store: Store) -> None:
    now = time.time()
    store.end_hud_session("old", now - 10)
    assert store.hud_session_ended("old", now - 10)
    store.end_hud_session("current", now + 3600)
    store.end_hud_session("current", now + 3600)  # twice: still one record
    assert store.hud_session_ended("current", now + 3600)
    assert not store.hud_session_ended("current", now + 3601)  # the expiry is part of the record
    assert not store.hud_session_ended("old", now - 10)  # purged: past its expiry anyway
    assert not store.hud_session_ended("never", now + 3600)


def test_config_edit_makes_a_revision_that_reuses_the_archive(store: Store) -> None:
    project = store.create_project("p")
    code_id = _code(store, project.id, config="old", retries=2, env_vars={"A": "1"})
    before = store.get_code(project.id, code_id)
    assert store.update_code_config(project.id, code_id, '{"new": true}') == 2
    after = store.get_code(project.id, code_id)
    assert after.rev == 2 and after.latest_revision.spec.config == '{"new": true}'
    assert after.latest_revision.spec.retries == 2 and after.latest_revision.spec.env_vars == {"A": "1"}
    assert after.latest_revision.checksum == before.latest_revision.checksum
    _, archive = store.get_archive(project.id, code_id, 2)
    assert archive == store.get_archive(project.id, code_id, 1)[1]
    assert store.get_revision_archive(after.latest_revision.id) == archive
    task = queue(store, project.id, "hello")
    assert task.code_rev == 2 and task.revision_id == after.latest_revision.id
    assert store.update_code_config(project.id, code_id, None) == 3
    assert store.get_code(project.id, code_id).latest_revision.spec.config is None


def test_config_edit_of_another_projects_package_is_not_found(store: Store) -> None:
    mine, theirs = store.create_project("mine"), store.create_project("theirs")
    code_id = _code(store, theirs.id)
    with pytest.raises(NotFound):
        store.update_code_config(mine.id, code_id, "x")
    assert store.get_code(theirs.id, code_id).rev == 1


def test_package_counts_active_now_and_ended_in_the_window(store: Store) -> None:
    project = store.create_project("p")
    hello, other = _code(store, project.id), _code(store, project.id, "other")
    done = queue(store, project.id, "hello")
    _run(store, done.id, TaskStatus.COMPLETE)
    old_done = queue(store, project.id, "hello")
    _run(store, old_done.id, TaskStatus.ERROR)
    _set_created(store, old_done.id, time.time() - 3 * DAY)  # ended, but outside the window
    old_queued = queue(store, project.id, "hello")
    _set_created(store, old_queued.id, time.time() - 3 * DAY)  # queued long ago: still counted
    queue(store, project.id, "other")
    counts = store.package_counts(project.id, [hello, other], time.time() - DAY)
    assert counts[hello][TaskStatus.QUEUED] == 1 and counts[hello][TaskStatus.COMPLETE] == 1
    assert counts[hello][TaskStatus.ERROR] == 0
    assert counts[other][TaskStatus.QUEUED] == 1 and sum(counts[other].values()) == 1
    assert store.package_counts(project.id, [], 0) == {}


def test_task_series_per_day_and_per_group(store: Store) -> None:
    project = store.create_project("p")
    _code(store, project.id)
    today = int(time.time()) // DAY * DAY
    a = queue(store, project.id, "hello")
    _run(store, a.id, TaskStatus.COMPLETE, seconds=3, cpu_time_ms=1_250)
    b = queue(store, project.id, "hello")
    _run(store, b.id, TaskStatus.TIMEOUT, seconds=5, cpu_time_ms=4_000)
    d = queue(store, project.id, "hello")
    _run(store, d.id, TaskStatus.COMPLETE, seconds=1)  # no usage recorded: no CPU time
    c = queue(store, project.id, "hello", cluster="gpu")
    _set_created(store, c.id, today - DAY + 10)
    queue(store, project.id, "hello", cluster="gpu")
    points = store.task_series(project.id, today - 30 * DAY, DAY, "cluster")
    found = {(p.group, p.bucket): (p.tasks, p.failed, round(p.duration_s), p.cpu_s) for p in points}
    assert found == {
        ("default", today): (3, 1, 9, 5.25),
        ("gpu", today - DAY): (1, 0, 0, 0.0),
        ("gpu", today): (1, 0, 0, 0.0),
    }
    by_code = store.task_series(project.id, today, 3600, "code")
    assert {p.group for p in by_code} == {"hello"} and sum(p.tasks for p in by_code) == 4
    assert all(p.bucket % 3600 == 0 for p in by_code)


def test_usage_days_count_tasks_that_ran_by_priority(store: Store) -> None:
    project = store.create_project("p")
    _code(store, project.id)
    for priority, seconds in ((0, 4.0), (2, 6.0)):
        task = queue(store, project.id, "hello", priority=priority)
        _run(store, task.id, TaskStatus.COMPLETE, seconds=seconds)
    queue(store, project.id, "hello")  # never ran: not usage
    days = store.usage_days(project.id, time.time() - DAY)
    assert sorted((d.priority, d.tasks_run, round(d.compute_s)) for d in days) == [(0, 1, 4), (2, 1, 6)]


def test_usage_days_sum_cpu_time_and_keep_the_largest_peak(store: Store) -> None:
    project = store.create_project("p")
    _code(store, project.id)
    for cpu_ms, peak in ((1500, 100 * 2**20), (2500, 300 * 2**20), (None, None)):
        _run(
            store,
            queue(store, project.id, "hello").id,
            TaskStatus.COMPLETE,
            cpu_time_ms=cpu_ms,
            peak_memory_bytes=peak,
        )
    (day,) = store.usage_days(project.id, time.time() - DAY)
    assert (day.tasks_run, day.cpu_s, day.peak_memory_bytes) == (3, 4.0, 300 * 2**20)
    other = store.create_project("q")
    _code(store, other.id)
    _run(store, queue(store, other.id, "hello").id, TaskStatus.COMPLETE)
    (unmeasured,) = store.usage_days(other.id, time.time() - DAY)
    assert (unmeasured.cpu_s, unmeasured.peak_memory_bytes) == (0.0, None)


def test_outcome_and_active_counts(store: Store) -> None:
    project = store.create_project("p")
    code_id = _code(store, project.id)
    for status in (TaskStatus.COMPLETE, TaskStatus.COMPLETE, TaskStatus.ERROR):
        _run(store, queue(store, project.id, "hello").id, status)
    waiting = queue(store, project.id, "hello", priority=1)
    queue(store, project.id, "hello", priority=1, delay=3600)  # not runnable yet
    outcomes = {(c.project_id, c.code_name, c.status): c.count for c in store.outcome_counts()}
    assert outcomes == {(project.id, "hello", "complete"): 2, (project.id, "hello", "error"): 1}
    (active,) = store.active_counts()
    assert (active.status, active.priority, active.count) == ("queued", 1, 2)
    assert active.oldest_runnable is not None and abs(active.oldest_runnable - waiting.run_at) < 1e-3
    store.delete_code(project.id, code_id)  # its queued tasks are cancelled; all stay, still named
    after = {(c.code_name, c.status): c.count for c in store.outcome_counts()}
    assert after == {("hello", "complete"): 2, ("hello", "error"): 1, ("hello", "cancelled"): 2}
    assert store.active_counts() == []


def test_task_facts_are_events_after_an_id_with_their_tasks(store: Store) -> None:
    project = store.create_project("p")
    _code(store, project.id)
    before = store.last_event_id()
    task = queue(store, project.id, "hello", priority=2)
    _run(store, task.id, TaskStatus.COMPLETE, seconds=7, cpu_time_ms=1234)
    facts = store.task_facts_since(before, ["started", "complete"])
    assert facts[-1].cpu_time_ms == 1234
    assert [f.kind for f in facts] == ["started", "complete"]
    assert all((f.project_id, f.code_name, f.priority) == (project.id, "hello", 2) for f in facts)
    end = facts[-1]
    assert end.start_time is not None and end.end_time is not None
    assert round(end.end_time - end.start_time) == 7
    assert store.task_facts_since(facts[-1].event_id, ["started", "complete"]) == []
    assert store.last_event_id() >= facts[-1].event_id


def test_schedules_by_status(store: Store) -> None:
    project = store.create_project("p")
    _code(store, project.id)
    kept, cancelled = store.create_schedules(
        project.id,
        [ScheduleSpec(code_name="hello", run_every=3600), ScheduleSpec(code_name="hello", run_every=60)],
        cadence_of,
    )
    store.cancel_schedule(project.id, cancelled.id)
    assert [s.id for s in store.list_schedules_by_status(project.id, ["scheduled"], 0, 10)] == [kept.id]
    assert [s.id for s in store.list_schedules_by_status(project.id, ["cancelled"], 0, 10)] == [cancelled.id]
    assert store.list_schedules_by_status(project.id, ["complete"], 0, 10) == []


def test_time_buckets_are_utc_floors(store: Store) -> None:
    """A task created a moment before midnight belongs to that day, not the next."""
    project = store.create_project("p")
    _code(store, project.id)
    midnight = int(time.time()) // DAY * DAY
    task = queue(store, project.id, "hello")
    _set_created(store, task.id, midnight - 0.4)
    (point,) = store.task_series(project.id, midnight - 2 * DAY, DAY, "cluster")
    assert point.bucket == midnight - DAY
