"""The PostgreSQL claim against the length of the queue.

A benchmark, not a test. In a throwaway database (dropped at the end, also on Ctrl-C) it
queues 1k, then 100k, then 1M tasks (COPY), and at each size measures ``PostgresStore.claim``,
the real method (one statement, then the commit):

* both orders of the claim: by priority (nothing starved) and starved tasks first
  (``starvation_s=0`` makes every runnable task starved);
* from 1 claimer and from ``--claimers`` concurrent claimers (threads, one connection each);
* claims per second and latency p50/p90/p99, end to end from Python;
* ``EXPLAIN (ANALYZE, BUFFERS)`` of one claim (rolled back): the plan and the server's time;
* a control without the claim's lane index (migration 0007), to show what it buys.

Tasks belong to three code packages, one of them with a max_concurrency high enough never to
be reached: its claims go through the per-package lock and count like real limited ones.

Run: ``. .venv/bin/activate && python bench/claim_pg.py`` (``--sizes 1000,100000 --claims 300``
for a quick run; ``--help``). Figures go to stdout and, as JSON, to ``bench/results/``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import sqlalchemy as sa
from psycopg import sql

from dockworker import ids
from dockworker.models import CodeSpec
from dockworker.store.postgres import CLAIM, PostgresStore

RESULTS_DIR = Path(__file__).resolve().parent / "results"
SERVER_URL = os.environ.get("DOCKWORKER_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
QUEUE_INDEXES = {
    "ix_tasks_queue_lane": "ON tasks (code_id, cluster, priority, run_at, id) WHERE status = 'queued'",
}
TASK_COLUMNS = (
    "id, project_id, code_id, code_name, code_rev, revision_id, status, priority, timeout, delay,"
    " cluster, payload, created_at, updated_at, run_at"
)
ORDERS = {"priority": 3600.0, "starved": 0.0}  # starvation_s for each order of the claim


@dataclass
class Row:
    queued: int
    order: str
    claimers: int
    indexes: bool
    claims: int
    claims_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    server_ms: float | None = None
    plan_index: str | None = None


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--server", default=SERVER_URL, help="PostgreSQL server (a database to connect to)")
    parser.add_argument("--sizes", default="1000,100000,1000000", help="queue lengths, increasing")
    parser.add_argument("--claims", type=int, default=1000, help="claims measured per row")
    parser.add_argument("--claimers", type=int, default=4, help="concurrent claimers of the second row")
    parser.add_argument("--control-claims", type=int, default=5, help="claims measured without the indexes")
    parser.add_argument(
        "--control-max", type=int, default=100_000, help="no measure without the indexes above this length"
    )
    parser.add_argument("--show-plan", action="store_true", help="print every plan, not only the largest")
    return parser.parse_args(argv)


# --- the throwaway database -----------------------------------------------------------------------


def libpq(url: str, database: str | None = None) -> str:
    parsed = sa.engine.make_url(url).set(drivername="postgresql")
    if database is not None:
        parsed = parsed.set(database=database)
    return parsed.render_as_string(hide_password=False)


@contextmanager
def throwaway_database(server: str) -> Iterator[str]:
    name = f"dw_bench_claim_{os.getpid()}"
    with psycopg.connect(libpq(server), autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            yield libpq(server, name)
        finally:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


class Queue:
    """The tasks of three code packages, one with a max_concurrency never reached."""

    def __init__(self, store: PostgresStore, url: str) -> None:
        self.store = store
        self.url = url
        self.project = store.create_project("bench").id
        self.packages = []
        for name, limit in (("a", None), ("b", None), ("limited", 10_000_000)):
            spec = CodeSpec(name=name, stack="busybox", command="true", max_concurrency=limit)
            code = store.save_code(self.project, spec, None, None)
            self.packages.append((code.id, code.name, code.latest_revision.id))

    def length(self) -> int:
        with self.store.engine.connect() as conn:
            return int(
                conn.execute(sa.text("SELECT count(*) FROM tasks WHERE status = 'queued'")).scalar_one()
            )

    def fill_to(self, size: int, analyze: bool = False) -> float:
        """COPY queued tasks until there are ``size``: runnable within the last minute, priorities
        0/1/2 at 70/20/10 %. Triggers are off for the load (no NOTIFY per row). Returns the
        seconds taken."""
        started = time.perf_counter()
        count = size - self.length()
        now = time.time()
        with psycopg.connect(self.url) as conn:
            conn.execute("SET session_replication_role = replica")
            with conn.cursor() as cursor, cursor.copy(f"COPY tasks ({TASK_COLUMNS}) FROM STDIN") as copy:
                for n in range(count):
                    code_id, code_name, revision_id = self.packages[n % len(self.packages)]
                    run_at = now - 60 + 60 * n / count
                    priority = random.choices((0, 1, 2), (70, 20, 10))[0]
                    task = (
                        ids.new_id(),
                        self.project,
                        code_id,
                        code_name,
                        1,
                        revision_id,
                        "queued",
                        priority,
                    )
                    copy.write_row((*task, 60, 0, "default", "", run_at, run_at, run_at))
            if analyze:
                conn.execute("ANALYZE tasks")
        return time.perf_counter() - started


def set_queue_indexes(url: str, present: bool) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for name, definition in QUEUE_INDEXES.items():
            if present:
                conn.execute(f"CREATE INDEX IF NOT EXISTS {name} {definition}")
            else:
                conn.execute(f"DROP INDEX IF EXISTS {name}")
        conn.execute("ANALYZE tasks")


# --- measuring ------------------------------------------------------------------------------------


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    position = (len(ordered) - 1) * fraction
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def measure_claims(
    store: PostgresStore, claims: int, claimers: int, starvation_s: float
) -> tuple[float, list[float]]:
    """Run ``claims`` claims from ``claimers`` threads; returns (claims per second, latencies)."""
    latencies: list[float] = []
    lock = threading.Lock()
    barrier = threading.Barrier(claimers)

    def claimer(index: int) -> None:
        mine: list[float] = []
        barrier.wait()
        for _ in range(claims // claimers):
            started = time.perf_counter()
            task = store.claim(f"bench-{index}", ["default"], 3600, starvation_s=starvation_s)
            if task is None:  # cannot happen while the queue is far from empty
                break
            mine.append(time.perf_counter() - started)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=claimer, args=(i,)) for i in range(claimers)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return len(latencies) / (time.perf_counter() - started), latencies


def explain_claim(store: PostgresStore, starvation_s: float) -> list[str]:
    now = time.time()
    params = dict(
        runner_id="bench-explain",
        lease_expires_at=now + 3600,
        starved_before=now - starvation_s,
        now=now,
        clusters=["default"],
    )
    with store.engine.connect() as conn:
        plan = conn.execute(sa.text("EXPLAIN (ANALYZE, BUFFERS) " + CLAIM.text), params).scalars().all()
        conn.rollback()
    return [str(line) for line in plan]


def plan_summary(plan: list[str]) -> tuple[float | None, str | None]:
    """The server's execution time, and the task indexes the executed part of the plan read."""
    server_ms = next((float(line.split()[2]) for line in plan if line.startswith("Execution Time")), None)
    scans = [
        line.split(" using ")[1].split()[0]
        for line in plan
        if " using ix_tasks" in line and "never executed" not in line
    ]
    return server_ms, ",".join(dict.fromkeys(scans)) or None


def measure_size(
    queue: Queue, size: int, args: argparse.Namespace, largest: bool, indexes: bool
) -> list[Row]:
    """One row per order of the claim and number of claimers; the queue is topped up to ``size``
    before each."""
    rows = []
    claims = min(args.claims if indexes else args.control_claims, size // 4)
    for order, starvation_s in ORDERS.items():
        queue.fill_to(size)
        plan = explain_claim(queue.store, starvation_s)
        if (args.show_plan or largest) and indexes:
            print(f"\nEXPLAIN ANALYZE of the claim, {size:,} queued, order {order}:")
            print("\n".join("    " + line for line in plan))
        server_ms, plan_index = plan_summary(plan)
        for claimers in (1, args.claimers) if indexes else (1,):
            queue.fill_to(size)
            rate, latencies = measure_claims(queue.store, claims, claimers, starvation_s)
            rows.append(
                Row(
                    queued=size,
                    order=order,
                    claimers=claimers,
                    indexes=indexes,
                    claims=len(latencies),
                    claims_per_s=rate,
                    p50_ms=1000 * statistics.median(latencies),
                    p90_ms=1000 * percentile(latencies, 0.9),
                    p99_ms=1000 * percentile(latencies, 0.99),
                    server_ms=server_ms,
                    plan_index=plan_index,
                )
            )
            print_row(rows[-1])
    return rows


# --- output ---------------------------------------------------------------------------------------

HEADER = (
    f"{'queued':>10} {'order':>8} {'claimers':>8} {'indexes':>7} {'claims':>6} {'claims/s':>9}"
    f" {'p50 ms':>7} {'p90 ms':>7} {'p99 ms':>7} {'server ms':>9}  plan reads"
)


def print_row(row: Row) -> None:
    server = "" if row.server_ms is None else f"{row.server_ms:.3f}"
    print(
        f"{row.queued:>10,} {row.order:>8} {row.claimers:>8} {'yes' if row.indexes else 'NO':>7}"
        f" {row.claims:>6} {row.claims_per_s:>9.0f} {row.p50_ms:>7.2f} {row.p90_ms:>7.2f} {row.p99_ms:>7.2f}"
        f" {server:>9}  {row.plan_index or 'no index: full scan and sort'}",
        flush=True,
    )


def save(rows: list[Row], setup: dict[int, float], args: argparse.Namespace) -> Path:
    RESULTS_DIR.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS_DIR / f"claim_pg-{stamp}.json"
    with psycopg.connect(libpq(args.server)) as conn:
        server_version = conn.execute("SHOW server_version").fetchone()
    document: dict[str, Any] = {
        "args": vars(args),
        "server_version": server_version[0] if server_version else None,
        "cpus": os.cpu_count(),
        "setup_seconds": setup,
        "rows": [asdict(r) for r in rows],
    }
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path


# --- main -----------------------------------------------------------------------------------------


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)  # the throwaway database is dropped on the way out
    sizes = [int(s) for s in args.sizes.split(",")]
    rows: list[Row] = []
    setup: dict[int, float] = {}
    with throwaway_database(args.server) as url:
        store = PostgresStore(url, pool_size=args.claimers + 2)
        try:
            store.migrate()
            queue = Queue(store, url)
            for size in sizes:
                setup[size] = queue.fill_to(size, analyze=True)
                print(f"\n{size:,} tasks queued (COPY and ANALYZE: {setup[size]:.1f} s)\n{HEADER}")
                rows += measure_size(queue, size, args, size == sizes[-1], indexes=True)
                if size <= args.control_max:
                    set_queue_indexes(url, present=False)
                    rows += measure_size(queue, size, args, False, indexes=False)
                    set_queue_indexes(url, present=True)
        finally:
            store.close()
    print(f"\n{HEADER}")
    for row in rows:
        print_row(row)
    print(f"\nresults: {save(rows, setup, args)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
