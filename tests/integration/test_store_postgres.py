"""PostgreSQL only: the claim under real concurrency (processes, threads, open transactions), the
per-package lock behind max_concurrency, NOTIFY wake-ups and the listener's reconnects."""

from __future__ import annotations

import multiprocessing
import random
import statistics
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

from dockworker.models import CodeSpec, NewTask, TaskOutcome
from dockworker.states import EventKind, TaskStatus
from dockworker.store import Store, open_store
from dockworker.store.postgres import CLAIM, LISTENER_APPLICATION_NAME, PostgresStore
from tests.helpers import queue, save_code
from tests.pgdb import Databases, libpq_url

pytestmark = pytest.mark.dialects("postgresql")

COMPLETE = TaskOutcome(status=TaskStatus.COMPLETE, msg="", exit_code=0)


@pytest.fixture
def pg(store: Store) -> PostgresStore:
    assert isinstance(store, PostgresStore)
    return store


@pytest.fixture
def project(pg: PostgresStore) -> str:
    project = pg.create_project("p").id
    save_code(pg, project, CodeSpec(name="c", stack="busybox", command="true"))
    return project


@pytest.fixture
def other(store_url: str) -> Iterator[Store]:
    """A second store on the same database: another process, as far as wake-ups go."""
    other = open_store(store_url)
    yield other
    other.close()


class OpenClaim:
    """A claim executed in a transaction left open, as a runner in the middle of claiming."""

    def __init__(self, pg: PostgresStore, runner_id: str) -> None:
        self.conn = pg.engine.connect()
        now = time.time()
        params = dict(
            runner_id=runner_id,
            lease_expires_at=now + 30,
            starved_before=now - 300,
            now=now,
            clusters=["default"],
        )
        self.row = self.conn.execute(CLAIM, params).first()

    def commit(self) -> None:
        self.conn.commit()
        self.conn.close()


# --- claims ---------------------------------------------------------------------------------------


def _claim_until_empty(url: str, runner_id: str, barrier: Any, results: Any) -> None:
    store = open_store(url)
    claimed: list[str] = []
    barrier.wait(60)
    while (task := store.claim(runner_id, ["default"], 30)) is not None:
        claimed.append(task.id)
    store.close()
    results.put((runner_id, claimed))


def test_claimers_in_several_processes_never_share_a_task(
    pg: PostgresStore, project: str, store_url: str
) -> None:
    queued = pg.enqueue(project, [NewTask(code_name="c")] * 400, 3600)
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(4), context.Queue()
    processes = [
        context.Process(target=_claim_until_empty, args=(store_url, f"r{i}", barrier, results))
        for i in range(4)
    ]
    for process in processes:
        process.start()
    per_runner = dict(results.get(timeout=90) for _ in processes)
    for process in processes:
        process.join(30)
        assert process.exitcode == 0
    claimed = [task_id for ids in per_runner.values() for task_id in ids]
    print("tasks claimed per process:", {runner: len(ids) for runner, ids in sorted(per_runner.items())})
    assert len(claimed) == len(set(claimed)) == len(queued)
    assert set(claimed) == {t.id for t in queued}
    for task_id in random.sample(claimed, 20):
        assert [e.kind for e in pg.list_events(task_id)] == ["queued", "claimed"]


def test_an_open_claim_does_not_block_another_one(pg: PostgresStore, project: str) -> None:
    first, second = queue(pg, project, "c"), queue(pg, project, "c")
    open_claim = OpenClaim(pg, "r1")
    started = time.monotonic()
    other = pg.claim("r2", ["default"], 30)
    assert time.monotonic() - started < 1
    assert open_claim.row is not None and open_claim.row.id == first.id
    assert other is not None and other.id == second.id
    open_claim.commit()


def test_a_package_at_its_limit_is_skipped_while_another_claim_counts_it(
    pg: PostgresStore, project: str
) -> None:
    save_code(pg, project, CodeSpec(name="one", stack="busybox", command="true", max_concurrency=1))
    first, second = queue(pg, project, "one"), queue(pg, project, "one")
    open_claim = OpenClaim(pg, "r1")
    assert open_claim.row is not None and open_claim.row.id == first.id
    assert pg.claim("r2", ["default"], 30) is None  # the package's lock is taken: skipped
    open_claim.commit()
    assert pg.claim("r2", ["default"], 30) is None  # one preparing: the package is full
    assert pg.mark_running(first.id, "r1", time.time())
    assert pg.finish(first.id, "r1", COMPLETE)
    claimed = pg.claim("r2", ["default"], 30)
    assert claimed is not None and claimed.id == second.id


def test_max_concurrency_holds_under_concurrent_claimers(pg: PostgresStore, project: str) -> None:
    """Eight claimers race for a package limited to 3 (mixed with unlimited tasks). The count of
    its preparing and running tasks is read continuously by a watcher, and by every claimer just
    after its claim committed: it never exceeds the limit."""
    limit, claimers = 3, 8
    save_code(pg, project, CodeSpec(name="limited", stack="busybox", command="true", max_concurrency=limit))
    news = [NewTask(code_name=name) for _ in range(40) for name in ("limited", "c")]
    queued = pg.enqueue(project, news, 3600)
    limited = pg.find_code(project, "limited")
    assert limited is not None
    count_active = sa.text(
        "SELECT count(*) FROM tasks WHERE code_id = :code AND status IN ('preparing', 'running')"
    )
    seen: list[int] = []
    done = threading.Event()

    def count(conn: sa.Connection) -> int:
        found = int(conn.execute(count_active, {"code": limited.id}).scalar_one())
        conn.rollback()
        seen.append(found)
        return found

    def watch() -> None:
        with pg.engine.connect() as conn:
            while not done.is_set():
                count(conn)

    def claim_and_run(runner_id: str) -> None:
        idle_since = time.monotonic()
        with pg.engine.connect() as conn:
            while time.monotonic() - idle_since < 1.0:
                task = pg.claim(runner_id, ["default"], 30)
                if task is None:
                    time.sleep(0.002)
                    continue
                idle_since = time.monotonic()
                if task.code_id == limited.id:
                    count(conn)
                time.sleep(random.uniform(0.001, 0.015))
                assert pg.mark_running(task.id, runner_id, time.time())
                assert pg.finish(task.id, runner_id, COMPLETE)

    watcher = threading.Thread(target=watch)
    watcher.start()
    threads = [threading.Thread(target=claim_and_run, args=(f"r{i}",)) for i in range(claimers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    done.set()
    watcher.join()
    print(f"active tasks of the limited package: max {max(seen)} in {len(seen)} counts (limit {limit})")
    assert max(seen) <= limit
    assert max(seen) == limit  # the claimers did press against the limit
    assert all(pg.load_task(t.id).status is TaskStatus.COMPLETE for t in queued)


def test_a_cancel_racing_a_claim_becomes_a_cancel_request(pg: PostgresStore, project: str) -> None:
    task = queue(pg, project, "c")
    open_claim = OpenClaim(pg, "r1")
    result: list[Any] = []
    canceller = threading.Thread(target=lambda: result.append(pg.request_cancel(project, task.id)))
    canceller.start()
    time.sleep(0.2)
    assert canceller.is_alive()  # waits for the claim's row lock
    open_claim.commit()
    canceller.join(10)
    assert result[0].status is TaskStatus.PREPARING and result[0].cancel_requested
    assert pg.cancel_requested("r1") == {task.id}


def test_concurrent_housekeepers_expire_each_lease_once(pg: PostgresStore, project: str) -> None:
    queued = pg.enqueue(project, [NewTask(code_name="c")] * 30, 3600)
    for _ in queued:
        assert pg.claim("r", ["default"], lease_ttl=0.01) is not None
    time.sleep(0.05)
    expired: list[str] = []
    lock = threading.Lock()

    def housekeeper() -> None:
        found = pg.expire_leases(budget=5, delay=60)
        with lock:
            expired.extend(t.id for t in found)

    threads = [threading.Thread(target=housekeeper) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(expired) == sorted(t.id for t in queued)
    for t in queued:
        assert pg.load_task(t.id).infra_attempts == 1
        assert [e.kind for e in pg.list_events(t.id)].count(EventKind.INFRA_RETRY) == 1


# --- wake-ups -------------------------------------------------------------------------------------


def _ready_to_wait(pg: PostgresStore) -> None:
    assert pg.listen(), "the listener did not connect"
    pg.wait_for_work(0)  # the signal every (re)connection sends


def _wake_after_enqueue(pg: PostgresStore, other: Store, project: str) -> tuple[float, float]:
    """Enqueue from the other store while this thread waits; returns (latency from the enqueue's
    commit, from its start)."""
    marks: dict[str, float] = {}

    def enqueue() -> None:
        time.sleep(0.05)
        marks["start"] = time.perf_counter()
        queue(other, project, "c")
        marks["committed"] = time.perf_counter()

    thread = threading.Thread(target=enqueue)
    thread.start()
    pg.wait_for_work(5)
    woke = time.perf_counter()
    thread.join()
    return woke - marks["committed"], woke - marks["start"]


def test_a_waiting_store_wakes_within_100_ms_of_an_enqueue_elsewhere(
    pg: PostgresStore, other: Store, project: str
) -> None:
    _ready_to_wait(pg)
    latencies = [_wake_after_enqueue(pg, other, project) for _ in range(15)]
    after_commit = sorted(max(0.0, a) for a, _ in latencies)
    after_start = sorted(b for _, b in latencies)
    ms = [1000 * statistics.median(after_commit), 1000 * after_commit[-1]]
    ms += [1000 * statistics.median(after_start), 1000 * after_start[-1]]
    print("NOTIFY wake-up latency, ms: after the enqueue's commit p50 {:.1f} max {:.1f};".format(*ms[:2]))
    print("                            after the enqueue's start  p50 {:.1f} max {:.1f}".format(*ms[2:]))
    assert after_commit[-1] < 0.1


def test_wait_for_work_times_out_when_nothing_comes(pg: PostgresStore) -> None:
    _ready_to_wait(pg)
    started = time.monotonic()
    pg.wait_for_work(0.3)
    assert 0.28 < time.monotonic() - started < 1.0


def _listener_pids(pg: PostgresStore) -> set[int]:
    with pg.engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT pid FROM pg_stat_activity"
                " WHERE application_name = :name AND datname = current_database()"
            ),
            {"name": LISTENER_APPLICATION_NAME},
        ).all()
    return {row.pid for row in rows}


def test_the_listener_reconnects_after_its_connection_is_killed(
    pg: PostgresStore, other: Store, project: str, store_url: str
) -> None:
    _ready_to_wait(pg)
    (first,) = _listener_pids(pg)
    with psycopg.connect(libpq_url(store_url), autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", [first])
    deadline = time.monotonic() + 10
    while (_listener_pids(pg) - {first}) == set():
        assert time.monotonic() < deadline, "the listener did not reconnect"
        time.sleep(0.02)
    started = time.monotonic()
    pg.wait_for_work(5)  # a reconnection signals: what was sent meanwhile was lost
    assert time.monotonic() - started < 0.5
    latency, _ = _wake_after_enqueue(pg, other, project)
    assert latency < 0.1


def test_notifications_come_for_each_way_work_appears(pg: PostgresStore, other: Store, project: str) -> None:
    """Queued by enqueue, by retry, back from an infrastructure failure; room freed in a limited
    package; a package resumed. Each one wakes a waiter."""
    save_code(other, project, CodeSpec(name="one", stack="busybox", command="true", max_concurrency=1))
    limited = queue(other, project, "one")
    plain = queue(other, project, "c")
    _ready_to_wait(pg)

    def wakes(action: Any) -> bool:
        pg.wait_for_work(0)
        timer = threading.Timer(0.02, action)
        timer.start()
        started = time.monotonic()
        pg.wait_for_work(2)
        woke = time.monotonic()
        timer.join()  # its connection back in the pool before the store closes
        return woke - started < 0.5

    assert wakes(lambda: queue(other, project, "c"))
    assert other.claim("r", ["default"], 30) is not None  # the limited task, queued first
    assert other.mark_running(limited.id, "r", time.time())
    assert wakes(lambda: other.finish(limited.id, "r", COMPLETE))
    assert wakes(lambda: other.retry(project, limited.id, 0))
    claimed = other.claim("r", ["default"], 30)
    assert claimed is not None and claimed.id == plain.id
    assert wakes(lambda: other.requeue_after_infra_failure(plain.id, "r", "engine down", 5, 0))
    code = other.find_code(project, "c")
    assert code is not None
    other.set_paused(project, code.id, True)
    assert wakes(lambda: other.set_paused(project, code.id, False))


# --- migrations -----------------------------------------------------------------------------------


def test_hosts_starting_together_migrate_one_after_the_other(pg_databases: Databases) -> None:
    name = pg_databases.create_empty()
    stores = [PostgresStore(pg_databases.url(name)) for _ in range(4)]
    errors: list[BaseException] = []

    def migrate(store: PostgresStore) -> None:
        try:
            store.migrate()
            store.installation_id()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=migrate, args=(s,)) for s in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert len({s.installation_id() for s in stores}) == 1
    for store in stores:
        store.close()
    pg_databases.give_back(name)
