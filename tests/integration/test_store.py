"""The store contract, on every dialect: claims, leases, terminal states written once, retries."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import sqlalchemy as sa

from dockworker.errors import ClientError, Conflict, NotFound
from dockworker.models import CodeSpec, NewTask, TaskFilter, TaskOutcome
from dockworker.states import EventKind, TaskStatus
from dockworker.store import Store, open_store
from dockworker.store.sql import SqlStore
from tests.helpers import queue, save_code


@pytest.fixture
def project(store: Store) -> str:
    project = store.create_project("p").id
    save_code(store, project, CodeSpec(name="c", stack="busybox", command="true"))
    return project


def test_migrations_are_idempotent(store: Store) -> None:
    from tests.integration.test_migrations import _schema_diff

    store.migrate()
    store.migrate()
    assert _schema_diff(store) == []  # type: ignore[arg-type]


def test_claim_order_priority_then_fifo(store: Store, project: str) -> None:
    low = queue(store, project, "c", priority=0)
    high = queue(store, project, "c", priority=2)
    mid = queue(store, project, "c", priority=1)
    low2 = queue(store, project, "c", priority=0)
    claimed = [store.claim("r", ["default"], 30) for _ in range(5)]
    assert [t.id if t else None for t in claimed] == [high.id, mid.id, low.id, low2.id, None]
    assert all(t.status is TaskStatus.PREPARING and t.runner_id == "r" for t in claimed if t)


def test_claim_respects_delay_and_cluster(store: Store, project: str) -> None:
    queue(store, project, "c", delay=60)
    other = queue(store, project, "c", cluster="gpu")
    assert store.claim("r", ["default"], 30) is None
    claimed = store.claim("r", ["gpu"], 30)
    assert claimed is not None and claimed.id == other.id


def test_concurrent_claims_never_share_a_task(store: Store, project: str) -> None:
    tasks = store.enqueue(project, [NewTask(code_name="c", timeout=60)] * 60, 3600)
    got: list[str] = []
    lock = threading.Lock()

    def claimer(name: str) -> None:
        while (task := store.claim(name, ["default"], 30)) is not None:
            with lock:
                got.append(task.id)

    threads = [threading.Thread(target=claimer, args=(f"r{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(got) == sorted(t.id for t in tasks)


def test_max_concurrency_is_enforced_by_the_claim(store: Store, project: str) -> None:
    save_code(store, project, CodeSpec(name="one", stack="busybox", command="true", max_concurrency=1))
    first = queue(store, project, "one")
    queue(store, project, "one")
    assert store.claim("r1", ["default"], 30).id == first.id  # type: ignore[union-attr]
    assert store.claim("r2", ["default"], 30) is None
    assert store.mark_running(first.id, "r1", time.time())
    assert store.finish(first.id, "r1", TaskOutcome(status=TaskStatus.COMPLETE, msg=""))
    assert store.claim("r2", ["default"], 30) is not None


def test_terminal_state_is_written_once(store: Store, project: str) -> None:
    task = queue(store, project, "c")
    store.claim("r1", ["default"], 30)
    assert store.mark_running(task.id, "r1", time.time())
    assert store.finish(task.id, "r1", TaskOutcome(status=TaskStatus.COMPLETE, msg="", exit_code=0))
    assert not store.finish(task.id, "r1", TaskOutcome(status=TaskStatus.ERROR, msg="late", exit_code=1))
    assert not store.finish(task.id, "intruder", TaskOutcome(status=TaskStatus.ERROR, msg="x"))
    final = store.load_task(task.id)
    assert final.status is TaskStatus.COMPLETE
    assert [e.kind for e in store.list_events(task.id)].count(EventKind.LATE_REPORT_REFUSED) == 2


def test_expired_lease_is_requeued_once_then_the_late_report_is_refused(store: Store, project: str) -> None:
    task = queue(store, project, "c")
    store.claim("r1", ["default"], lease_ttl=0.05)
    assert store.mark_running(task.id, "r1", time.time())
    time.sleep(0.1)
    expired = store.expire_leases(budget=3, delay=0)
    assert [t.id for t in expired] == [task.id]
    assert store.expire_leases(budget=3, delay=0) == []
    requeued = store.load_task(task.id)
    assert requeued.status is TaskStatus.QUEUED and requeued.infra_attempts == 1
    assert "lost its lease" in (requeued.msg or "")
    assert not store.finish(task.id, "r1", TaskOutcome(status=TaskStatus.COMPLETE, msg=""))
    again = store.claim("r2", ["default"], 30)
    assert again is not None and again.id == task.id and again.attempts == 1  # started once so far
    assert store.mark_running(task.id, "r2", time.time())
    assert store.load_task(task.id).attempts == 2


def test_infra_budget_is_separate_and_ends_in_error(store: Store, project: str) -> None:
    task = queue(store, project, "c")
    for _ in range(2):
        assert store.claim("r", ["default"], 30) is not None
        after = store.requeue_after_infra_failure(task.id, "r", "engine down", budget=2, delay=0)
        assert after is not None and after.status is TaskStatus.QUEUED
    assert store.claim("r", ["default"], 30) is not None
    final = store.requeue_after_infra_failure(task.id, "r", "engine down", budget=2, delay=0)
    assert final is not None and final.status is TaskStatus.ERROR
    assert final.msg == "infrastructure error: engine down (gave up after 3 attempts)"
    assert final.retry_count == 0 and final.retry_task_id is None


def test_infra_backoff_delays_the_retry(store: Store, project: str) -> None:
    task = queue(store, project, "c")
    store.claim("r", ["default"], 30)
    store.requeue_after_infra_failure(task.id, "r", "engine down", budget=5, delay=30)
    assert store.claim("r", ["default"], 30) is None
    assert store.load_task(task.id).run_at > time.time() + 20


def test_finish_records_what_the_task_used(store: Store, project: str) -> None:
    measured, unknown = queue(store, project, "c"), queue(store, project, "c")
    for task, outcome in (
        # above 2**31: the columns hold any figure a long task can reach
        (
            measured,
            TaskOutcome(
                status=TaskStatus.COMPLETE, msg="", cpu_time_ms=3_000_000_000, peak_memory_bytes=5 * 2**30
            ),
        ),
        (unknown, TaskOutcome(status=TaskStatus.ERROR, msg="exit code 1", exit_code=1)),
    ):
        assert store.claim("r1", ["default"], 30) is not None
        assert store.mark_running(task.id, "r1", time.time())
        assert store.finish(task.id, "r1", outcome)
    done = store.load_task(measured.id)
    assert (done.cpu_time_ms, done.peak_memory_bytes) == (3_000_000_000, 5 * 2**30)
    failed = store.load_task(unknown.id)
    assert (failed.cpu_time_ms, failed.peak_memory_bytes) == (None, None)
    assert queue(store, project, "c").cpu_time_ms is None  # a new task has used nothing yet


def test_a_late_report_does_not_overwrite_what_the_task_used(store: Store, project: str) -> None:
    task = queue(store, project, "c")
    store.claim("r1", ["default"], 30)
    assert store.mark_running(task.id, "r1", time.time())
    assert store.finish(task.id, "r1", TaskOutcome(status=TaskStatus.COMPLETE, msg="", cpu_time_ms=5))
    late = TaskOutcome(status=TaskStatus.ERROR, msg="late", cpu_time_ms=999, peak_memory_bytes=1)
    assert not store.finish(task.id, "r1", late)
    assert (store.load_task(task.id).cpu_time_ms, store.load_task(task.id).peak_memory_bytes) == (5, None)


def test_automatic_user_retries_make_a_chain(store: Store, project: str) -> None:
    save_code(store, project, CodeSpec(name="flaky", stack="busybox", command="false", retries=2))
    first = queue(store, project, "flaky")
    ids = [first.id]
    for _ in range(3):
        task = store.claim("r", ["default"], 30)
        assert task is not None and task.id == ids[-1]
        store.finish(task.id, "r", TaskOutcome(status=TaskStatus.ERROR, msg="exit code 1", exit_code=1))
        retry_id = store.load_task(task.id).retry_task_id
        if retry_id:
            ids.append(retry_id)
    chain = [store.load_task(i) for i in ids]
    assert [t.retry_count for t in chain] == [0, 1, 2]
    assert [t.original_task_id for t in chain] == [None, first.id, first.id]
    assert chain[-1].retry_task_id is None


def test_cancel_queued_and_running(store: Store, project: str) -> None:
    queued = queue(store, project, "c")
    assert store.request_cancel(project, queued.id).status is TaskStatus.CANCELLED
    with pytest.raises(Conflict):
        store.request_cancel(project, queued.id)
    running = queue(store, project, "c")
    store.claim("r", ["default"], 30)
    assert store.request_cancel(project, running.id).cancel_requested
    assert store.cancel_requested("r") == {running.id}


def test_project_scoping(store: Store, project: str) -> None:
    task = queue(store, project, "c")
    other = store.create_project("other").id
    with pytest.raises(NotFound):
        store.get_task(other, task.id)
    with pytest.raises(NotFound):
        store.enqueue(other, [NewTask(code_name="c")], 3600)


def test_timeout_above_the_maximum_is_refused(store: Store, project: str) -> None:
    with pytest.raises(ClientError, match="exceeds"):
        store.enqueue(project, [NewTask(code_name="c", timeout=7200)], 3600)
    assert store.list_tasks(project, TaskFilter()) == []


def test_batch_is_all_or_nothing(store: Store, project: str) -> None:
    with pytest.raises(NotFound):
        store.enqueue(project, [NewTask(code_name="c"), NewTask(code_name="missing")], 3600)
    assert store.list_tasks(project, TaskFilter()) == []


def test_log_chunks_and_offsets(store: Store, project: str) -> None:
    task = queue(store, project, "c")
    store.append_log(task.id, b"abc")
    store.append_log(task.id, b"defg")
    assert store.read_log(task.id) == b"abcdefg"
    assert store.read_log(task.id, 2) == b"cdefg"
    assert store.read_log(task.id, 5) == b"fg"
    assert store.read_log(task.id, 7) == b""
    assert store.load_task(task.id).log_size == 7


def test_appends_to_one_log_at_once_are_all_kept_in_size(store: Store, project: str) -> None:
    task = queue(store, project, "c")
    writers, appends = 4, 25
    ready = threading.Barrier(writers)
    failures: list[BaseException] = []

    def write(name: int) -> None:
        ready.wait(10)
        try:
            for n in range(appends):
                store.append_log(task.id, f"{name}:{n:02d}\n".encode())
        except BaseException as exc:  # reported below, not lost in the thread
            failures.append(exc)

    threads = [threading.Thread(target=write, args=(name,)) for name in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert failures == []
    log = store.read_log(task.id)
    assert len(log) == store.load_task(task.id).log_size == writers * appends * 5
    written = [f"{w}:{n:02d}".encode() for w in range(writers) for n in range(appends)]
    assert sorted(log.splitlines()) == sorted(written)
    assert store.read_log(task.id, len(log) - 5) == log[-5:]  # the offsets are where the bytes are


def test_deleting_a_code_package_cancels_its_queued_tasks(store: Store, project: str) -> None:
    task = queue(store, project, "c")
    code = store.find_code(project, "c")
    assert code is not None
    store.delete_code(project, code.id)
    gone = store.load_task(task.id)
    assert gone.status is TaskStatus.CANCELLED and gone.msg == "code package deleted"
    assert store.find_code(project, "c") is None


def test_token_uses_are_written_in_batches(store_url: str) -> None:
    first = open_store(store_url)
    first.migrate()
    project = first.create_project("p").id
    secrets = [first.create_token(project, f"t{i}")[0] for i in range(3)]
    assert isinstance(first, SqlStore)
    writes: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith("UPDATE TOKENS"):
            writes.append(statement)

    sa.event.listen(first.engine, "before_cursor_execute", record)
    for _ in range(20):
        for secret in secrets:
            assert first.authenticate(secret) is not None
    assert len(writes) == 1  # the first use at once; the others wait for the next batch
    assert all(t.last_used_at is not None for t in first.list_tokens(project))
    first.close()  # writes what is pending
    second = open_store(store_url)
    assert all(t.last_used_at is not None for t in second.list_tokens(project))
    second.close()
