"""A deep queue, on every dialect: backlogs the claim must not walk (paused packages, saturated
ones, delayed tasks, other clusters) still leave it the right task; its plan reads the lane
index even without statistics; a batch is one multi-row insert; cancel_all and listings do not
depend on bind-parameter limits or on the page's depth. Speed itself is measured in
bench/queue_depth.py, not asserted here."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from dockworker.errors import ClientError
from dockworker.models import CodeSpec, NewTask, TaskFilter, TaskOutcome
from dockworker.states import EventKind, TaskStatus
from dockworker.store import Store
from dockworker.store.postgres import CLAIM as PG_CLAIM
from dockworker.store.sql import SqlStore
from dockworker.store.sqlite import CLAIM as SQLITE_CLAIM
from tests.helpers import queue, save_code


@pytest.fixture
def project(store: Store) -> str:
    project = store.create_project("p").id
    for name in ("a", "b"):
        save_code(store, project, CodeSpec(name=name, stack="busybox", command="true"))
    return project


def _many(store: Store, project: str, code: str, count: int, **kw: Any) -> list[str]:
    ids: list[str] = []
    for start in range(0, count, 1000):
        batch = [NewTask(code_name=code, timeout=60, **kw)] * min(1000, count - start)
        ids += [t.id for t in store.enqueue(project, batch, 3600)]
    return ids


def _claim(store: Store, clusters: tuple[str, ...] = ("default",), **kw: Any) -> str | None:
    task = store.claim("r", list(clusters), 30, **kw)
    return None if task is None else task.id


def test_a_paused_backlog_hides_nothing_and_an_idle_claim_finds_nothing(store: Store, project: str) -> None:
    _many(store, project, "a", 3000, priority=2)
    code = store.find_code(project, "a")
    assert code is not None
    store.set_paused(project, code.id, True)
    assert _claim(store) is None
    later = queue(store, project, "b", priority=0)
    assert _claim(store) == later.id
    store.set_paused(project, code.id, False)
    assert store.load_task(str(_claim(store))).code_name == "a"


def test_a_saturated_backlog_hides_nothing(store: Store, project: str) -> None:
    save_code(store, project, CodeSpec(name="one", stack="busybox", command="true", max_concurrency=1))
    first, *_ = _many(store, project, "one", 2000, priority=2)
    assert _claim(store) == first
    assert _claim(store) is None
    other = queue(store, project, "b", priority=0)
    assert _claim(store) == other.id


def test_delayed_tasks_of_a_higher_priority_hide_nothing(store: Store, project: str) -> None:
    _many(store, project, "a", 2000, priority=2, delay=3600)
    runnable = queue(store, project, "a", priority=0)
    assert _claim(store) == runnable.id
    assert _claim(store) is None


def test_other_clusters_are_passed_and_several_are_served_in_order(store: Store, project: str) -> None:
    _many(store, project, "a", 2000, cluster="gpu")
    old = queue(store, project, "b", cluster="arm")
    new = queue(store, project, "a", cluster="default")
    assert _claim(store) == new.id
    third = queue(store, project, "a", cluster="default")
    assert _claim(store, ("default", "arm")) == old.id
    assert _claim(store, ("default", "arm")) == third.id
    assert _claim(store, ("default", "arm")) is None


def test_the_order_holds_across_packages_and_priorities(store: Store, project: str) -> None:
    low_old = queue(store, project, "a", priority=0)
    mid = queue(store, project, "b", priority=1)
    high = queue(store, project, "a", priority=2)
    low_new = queue(store, project, "b", priority=0)
    assert [_claim(store) for _ in range(5)] == [high.id, mid.id, low_old.id, low_new.id, None]
    starved = queue(store, project, "b", priority=0)
    time.sleep(0.3)
    urgent = queue(store, project, "a", priority=2)
    assert [_claim(store, starvation_s=0.2) for _ in range(2)] == [starved.id, urgent.id]


def test_a_task_whose_package_was_deleted_is_still_claimed(store: Store, project: str) -> None:
    task = queue(store, project, "a")
    assert _claim(store) == task.id
    code = store.find_code(project, "a")
    assert code is not None
    store.delete_code(project, code.id)
    requeued = store.requeue_after_infra_failure(task.id, "r", "engine down", 5, 0)
    assert requeued is not None and requeued.status is TaskStatus.QUEUED
    assert _claim(store) == task.id  # and its runner ends it: the revision is gone


# --- the plan -------------------------------------------------------------------------------------


def _explain(store: SqlStore, statement: sa.TextClause, prefix: str) -> list[str]:
    now = time.time()
    parameters = dict(
        runner_id="r",
        lease_expires_at=now + 30,
        starved_before=now - 300,
        now=now,
        clusters=store._claim_clusters(["default"]),
    )
    with store.engine.connect() as conn:
        store._plan_claim(conn)  # as claim() does
        rows = conn.execute(sa.text(prefix + statement.text), parameters).all()
        conn.rollback()
    return [str(row[-1]) for row in rows]


def test_the_claim_reads_the_lane_index_even_with_statistics_of_an_empty_table(
    store: Store, project: str, dialect: str
) -> None:
    assert isinstance(store, SqlStore)
    with store.engine.begin() as conn:  # statistics that say the queue is empty
        conn.exec_driver_sql("ANALYZE")
    save_code(store, project, CodeSpec(name="one", stack="busybox", command="true", max_concurrency=5))
    for code in ("a", "b", "one"):
        _many(store, project, code, 4000)
    if dialect == "sqlite":
        plan = _explain(store, SQLITE_CLAIM, "EXPLAIN QUERY PLAN ")
        on_tasks = [step for step in plan if re.match(r"(SCAN|SEARCH) t\b", step)]
        read_by = {"ix_tasks_queue_lane", "ix_tasks_active", "sqlite_autoindex_tasks_1"}
        for step in on_tasks:  # the lane index, or a bounded lookup (a package's active count)
            index = re.search(r"INDEX (\w+)", step)
            assert index is not None and (index[1] in read_by or "status=?" in step), plan
        assert sum("TEMP B-TREE" in step for step in plan) == 1, plan  # the heads only
        return
    plan = _explain(store, PG_CLAIM, "EXPLAIN (ANALYZE, COSTS OFF) ")
    text = "\n".join(plan)
    assert "Seq Scan on tasks" not in text and "Bitmap" not in text, text
    assert "ix_tasks_queue_lane" in text and "ix_tasks_code_status" not in text
    assert sum("Sort Key" in line for line in plan) == 1, text  # the heads only


# --- writing in bulk ------------------------------------------------------------------------------


@pytest.fixture
def statements(store: Store) -> Iterator[list[str]]:
    assert isinstance(store, SqlStore)
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(statement)

    sa.event.listen(store.engine, "before_cursor_execute", record)
    yield seen
    sa.event.remove(store.engine, "before_cursor_execute", record)


def test_a_batch_is_one_multi_row_insert_per_table(store: Store, project: str, statements: list[str]) -> None:
    tasks = store.enqueue(project, [NewTask(code_name="a", payload=f"{i}") for i in range(1000)], 3600)
    writes = [s for s in statements if "INSERT INTO" in s]
    into = [re.findall(r"INSERT INTO (\w+)", s) for s in writes]
    # SQLite: one multi-row insert per table; PostgreSQL: one statement for both.
    assert into in ([["tasks"], ["task_events"]], [["tasks", "task_events"]])
    assert len(tasks) == 1000 and tasks[7].payload == "7" and tasks[7].status is TaskStatus.QUEUED
    stored = store.load_task(tasks[7].id)
    assert stored == tasks[7]
    assert [e.kind for e in store.list_events(tasks[999].id)] == [EventKind.QUEUED]


@pytest.mark.slow
def test_cancel_all_beyond_the_bind_parameter_limit(
    store: Store, project: str, statements: list[str]
) -> None:
    count = 70_000  # PostgreSQL takes at most 65,535 bind parameters in one statement
    _many(store, project, "a", count)
    code = store.find_code(project, "a")
    assert code is not None
    claimed = store.claim("r", ["default"], 30)
    assert claimed is not None
    statements.clear()
    assert store.cancel_all(project, code.id) == (count - 1, 1)
    assert len(statements) < 10
    assert store.code_stats(project, code.id, 0, time.time() + 1)["cancelled"] == count - 1
    assert store.cancel_requested("r") == {claimed.id}
    some = store.list_tasks(project, TaskFilter(statuses=frozenset({TaskStatus.CANCELLED}), per_page=3))
    assert [e.kind for e in store.list_events(some[0].id)] == [EventKind.QUEUED, EventKind.CANCELLED]


def test_deep_pages_and_the_cursor_list_the_same_tasks(store: Store, project: str) -> None:
    ids = _many(store, project, "a", 2500)
    newest_first = list(reversed(ids))
    page = store.list_tasks(project, TaskFilter(page=80, per_page=30))
    assert [t.id for t in page] == newest_first[2400:2430]
    walked: list[str] = []
    after: str | None = None
    while True:
        found = store.list_tasks(project, TaskFilter(per_page=100, after_id=after))
        walked += [t.id for t in found]
        if len(found) < 100:
            break
        after = found[-1].id
    assert walked == newest_first
    with pytest.raises(ClientError, match="cursor"):
        store.list_tasks(project, TaskFilter(after_id="0" * 24))


def test_a_time_beyond_any_column_finds_nothing(store: Store, project: str) -> None:
    queue(store, project, "a")
    assert store.list_tasks(project, TaskFilter(from_time=10**20)) == []
    assert len(store.list_tasks(project, TaskFilter(to_time=10**20))) == 1


def test_finishing_a_deep_queue_keeps_the_order(store: Store, project: str) -> None:
    ids = _many(store, project, "a", 1500)
    for expected in ids[:50]:
        claimed = _claim(store)
        assert claimed == expected
        assert store.mark_running(expected, "r", time.time())
        assert store.finish(expected, "r", TaskOutcome(status=TaskStatus.COMPLETE, msg=""))
