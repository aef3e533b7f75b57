"""The store against the depth of its queue, on SQLite and PostgreSQL.

A benchmark, not a test: it prints figures and ratios and asserts nothing. For each store and
each depth (default 1k, 10k, 100k, 1M) it starts from an empty database (SQLite: a file in a
temporary directory; PostgreSQL: a throwaway database, dropped at the end, also on Ctrl-C;
statistics never collected: no ANALYZE, and autovacuum may be off) and measures, through the
real ``Store`` methods:

* ingest: ``enqueue`` in batches of ``--batch`` (1,000) from one thread, tasks/s over the whole
  fill and over its last tenth (the cost at that depth);
* claim latency p50/p90: by priority (nothing starved) and starved first (``starvation_s=0``),
  from 1 claimer and from ``--claimers`` threads at once;
* an idle claim (nothing claimable) with the whole queue paused, then with every package
  saturated (``max_concurrency`` reached);
* a listing's deep page (``page=900``, 30 a page) and the same page by cursor;
* ``cancel_all`` of the whole queue (its packages one after the other), in seconds.

The tasks belong to two packages, priorities 0/1/2 at 70/20/10 %. With ``--http`` it also
measures ingest through the real HTTP API: ``dockworker server`` in a child process on the
same kind of store, ``--http-clients`` clients (threads, one keep-alive connection each)
posting batches of ``--batch`` tasks.

Run: ``. .venv/bin/activate && python bench/queue_depth.py`` (``--depths 1000,10000 --claims
200`` for a quick run; ``--stores sqlite``; ``--help``). Figures go to stdout and, as JSON, to
``bench/results/``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from claim_pg import libpq, percentile  # this folder: run as python bench/queue_depth.py
from psycopg import sql

from dockworker.models import CodeSpec, NewTask, TaskFilter
from dockworker.store import Store, open_store

RESULTS_DIR = Path(__file__).resolve().parent / "results"
SERVER_URL = os.environ.get("DOCKWORKER_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
PACKAGES = ("a", "b")


@dataclass
class DepthRow:
    store: str
    depth: int
    ingest_per_s: float
    ingest_last_tenth_per_s: float
    claims: dict[str, dict[str, float]] = field(default_factory=dict)
    idle_paused_ms: float = 0.0
    idle_saturated_ms: float = 0.0
    page_900_ms: float | None = None
    cursor_900_ms: float | None = None
    cancel_all_s: float = 0.0
    cancelled: int = 0


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--stores", default="sqlite,postgresql")
    parser.add_argument("--depths", default="1000,10000,100000,1000000", help="queue depths, increasing")
    parser.add_argument("--batch", type=int, default=1000, help="tasks per enqueue")
    parser.add_argument("--claims", type=int, default=400, help="claims measured per order and claimer count")
    parser.add_argument("--claimers", type=int, default=4)
    parser.add_argument("--idle", type=int, default=100, help="idle claims measured")
    parser.add_argument("--server", default=SERVER_URL, help="PostgreSQL server (a database to connect to)")
    parser.add_argument("--http", action="store_true", help="also measure ingest through the HTTP API")
    parser.add_argument("--http-clients", type=int, default=4)
    parser.add_argument("--http-batches", type=int, default=40, help="batches posted in all")
    return parser.parse_args(argv)


# --- databases ------------------------------------------------------------------------------------


@contextmanager
def empty_database(kind: str, server: str, label: str) -> Iterator[str]:
    if kind == "sqlite":
        with tempfile.TemporaryDirectory(prefix="dw-bench-") as directory:
            yield f"sqlite:///{directory}/dockworker.db"
        return
    name = f"dw_bench_depth_{os.getpid()}_{label}"
    with psycopg.connect(libpq(server), autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            yield libpq(server, name)
        finally:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def prepared(url: str) -> tuple[Store, str]:
    store = open_store(url)
    store.migrate()
    project = store.create_project("bench").id
    for name in PACKAGES:
        store.save_code(project, CodeSpec(name=name, stack="busybox", command="true"), None, None)
    return store, project


# --- measuring ------------------------------------------------------------------------------------


def batches(count: int, size: int, rng: random.Random) -> Iterator[list[NewTask]]:
    for start in range(0, count, size):
        yield [
            NewTask(
                code_name=PACKAGES[(start + i) % len(PACKAGES)],
                priority=rng.choices((0, 1, 2), (70, 20, 10))[0],
                timeout=60,
                payload=f'{{"n": {start + i}}}',
            )
            for i in range(min(size, count - start))
        ]


def fill(store: Store, project: str, depth: int, size: int) -> tuple[float, float]:
    """Queue ``depth`` tasks; returns (tasks/s overall, tasks/s over the last tenth)."""
    rng = random.Random(depth)
    work = list(batches(depth, size, rng))  # made before the clock starts
    times: list[float] = []
    for batch in work:
        started = time.perf_counter()
        store.enqueue(project, batch, 3600)
        times.append(time.perf_counter() - started)
    tail = times[-max(1, len(times) // 10) :]
    return depth / sum(times), len(tail) * size / sum(tail)


def timed(action: Callable[[], object], repeat: int) -> list[float]:
    found = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        found.append(time.perf_counter() - started)
    return found


def claim_latencies(store: Store, claims: int, claimers: int, starvation_s: float) -> dict[str, float]:
    latencies: list[float] = []
    lock = threading.Lock()
    barrier = threading.Barrier(claimers)

    def claimer(index: int) -> None:
        mine = []
        barrier.wait()
        for _ in range(claims // claimers):
            started = time.perf_counter()
            task = store.claim(f"bench-{index}", ["default"], 3600, starvation_s=starvation_s)
            mine.append(time.perf_counter() - started)
            if task is None:
                break
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=claimer, args=(i,)) for i in range(claimers)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    return {
        "p50_ms": 1000 * statistics.median(latencies),
        "p90_ms": 1000 * percentile(latencies, 0.9),
        "claims_per_s": len(latencies) / elapsed,
    }


def measure(kind: str, depth: int, args: argparse.Namespace) -> DepthRow:
    with empty_database(kind, args.server, str(depth)) as url:
        store, project = prepared(url)
        try:
            overall, last = fill(store, project, depth, args.batch)
            row = DepthRow(store=kind, depth=depth, ingest_per_s=overall, ingest_last_tenth_per_s=last)
            claims = min(args.claims, depth // 8)
            for order, starvation_s in (("priority", 3600.0), ("starved", 0.0)):
                for claimers in (1, args.claimers):
                    row.claims[f"{order}/{claimers}"] = claim_latencies(store, claims, claimers, starvation_s)
            codes = [store.find_code(project, name) for name in PACKAGES]
            for code in codes:
                assert code is not None
                store.set_paused(project, code.id, True)
            row.idle_paused_ms = 1000 * statistics.median(
                timed(lambda: store.claim("bench-idle", ["default"], 3600), args.idle)
            )
            for code in codes:
                assert code is not None
                store.set_paused(project, code.id, False)
                # Each package has claimed tasks: a limit of 1 leaves no room.
                spec = CodeSpec(name=code.name, stack="busybox", command="true", max_concurrency=1)
                store.save_code(project, spec, None, None)
            row.idle_saturated_ms = 1000 * statistics.median(
                timed(lambda: store.claim("bench-idle", ["default"], 3600), args.idle)
            )
            if depth >= 901 * 30:
                deep = TaskFilter(page=900, per_page=30)
                row.page_900_ms = 1000 * statistics.median(timed(lambda: store.list_tasks(project, deep), 20))
                before = store.list_tasks(project, TaskFilter(page=899, per_page=30))[-1].id
                by_cursor = TaskFilter(per_page=30, after_id=before)
                assert store.list_tasks(project, by_cursor) == store.list_tasks(project, deep)
                row.cursor_900_ms = 1000 * statistics.median(
                    timed(lambda: store.list_tasks(project, by_cursor), 20)
                )
            started = time.perf_counter()
            for code in codes:
                assert code is not None
                row.cancelled += store.cancel_all(project, code.id)[0]
            row.cancel_all_s = time.perf_counter() - started
            return row
        finally:
            store.close()


# --- through HTTP ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def http_ingest(kind: str, args: argparse.Namespace) -> dict[str, float]:
    with empty_database(kind, args.server, "http") as url, tempfile.TemporaryDirectory() as data_dir:
        store, project = prepared(url)
        token, _ = store.create_token(project, "bench")
        store.close()
        port = free_port()
        env = {**os.environ, "DOCKWORKER_STORE_URL": url}
        command = ["dockworker", "server", "--data-dir", data_dir, "--port", str(port)]
        server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            rng = random.Random(1)
            bodies = [
                json.dumps(
                    {
                        "tasks": [
                            {"code_name": t.code_name, "priority": t.priority, "payload": t.payload}
                            for t in b
                        ]
                    }
                )
                for b in batches(args.http_batches * args.batch, args.batch, rng)
            ]
            headers = {"Authorization": f"OAuth {token}", "Content-Type": "application/json"}
            path = f"/2/projects/{project}/tasks"
            lock = threading.Lock()
            failures: list[int] = []

            def client() -> None:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
                while True:
                    with lock:
                        if not bodies:
                            break
                        body = bodies.pop()
                    conn.request("POST", path, body=body, headers=headers)
                    response = conn.getresponse()
                    response.read()
                    if response.status != 200:
                        failures.append(response.status)
                conn.close()

            threads = [threading.Thread(target=client) for _ in range(args.http_clients)]
            started = time.perf_counter()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            elapsed = time.perf_counter() - started
            if failures:
                raise RuntimeError(f"HTTP ingest failed: {failures[:5]}")
            return {"tasks_per_s": args.http_batches * args.batch / elapsed, "clients": args.http_clients}
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(30)


# --- output ---------------------------------------------------------------------------------------


def print_table(rows: list[DepthRow], claimers: int) -> None:
    header = (
        f"{'store':>10} {'depth':>9} {'ingest/s':>9} {'last10%/s':>9}"
        f" {'claim p50':>9} {'p90':>6} {'starved':>7} {f'x{claimers} p50':>8} {'claims/s':>8}"
        f" {'idle:paused':>11} {'saturated':>9} {'page900':>8} {'cursor':>7} {'cancel_all':>10}"
    )
    print(header)
    for r in rows:
        one, many = r.claims["priority/1"], r.claims[f"priority/{claimers}"]
        page = "" if r.page_900_ms is None else f"{r.page_900_ms:.1f}"
        cursor = "" if r.cursor_900_ms is None else f"{r.cursor_900_ms:.2f}"
        print(
            f"{r.store:>10} {r.depth:>9,} {r.ingest_per_s:>9.0f} {r.ingest_last_tenth_per_s:>9.0f}"
            f" {one['p50_ms']:>9.2f} {one['p90_ms']:>6.2f} {r.claims['starved/1']['p50_ms']:>7.2f}"
            f" {many['p50_ms']:>8.2f} {many['claims_per_s']:>8.0f}"
            f" {r.idle_paused_ms:>11.2f} {r.idle_saturated_ms:>9.2f} {page:>8} {cursor:>7}"
            f" {r.cancel_all_s:>9.2f}s"
        )
    print("(ms unless marked; claims/s with the concurrent claimers)")
    for kind in dict.fromkeys(r.store for r in rows):
        mine = [r for r in rows if r.store == kind]
        base = mine[0].claims["priority/1"]["p50_ms"]
        ratios = ", ".join(f"{r.depth:,}: {r.claims['priority/1']['p50_ms'] / base:.2f}x" for r in mine)
        print(f"{kind}: claim p50 relative to {mine[0].depth:,} queued: {ratios}")


def save(rows: list[DepthRow], http: dict[str, Any], args: argparse.Namespace) -> Path:
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"queue_depth-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    document = {"args": vars(args), "cpus": os.cpu_count(), "rows": [asdict(r) for r in rows], "http": http}
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)  # throwaway databases are dropped on the way out
    rows: list[DepthRow] = []
    http: dict[str, Any] = {}
    for kind in args.stores.split(","):
        for depth in (int(d) for d in args.depths.split(",")):
            print(f"{kind}: {depth:,} queued ...", flush=True)
            rows.append(measure(kind, depth, args))
            print_table([rows[-1]], args.claimers)
        if args.http:
            http[kind] = http_ingest(kind, args)
            print(f"{kind}: HTTP ingest {http[kind]['tasks_per_s']:.0f} tasks/s", flush=True)
    print()
    print_table(rows, args.claimers)
    for kind, figures in http.items():
        print(
            f"{kind}: HTTP ingest {figures['tasks_per_s']:.0f} tasks/s"
            f" ({figures['clients']} clients, batches of {args.batch})"
        )
    print(f"\nresults: {save(rows, http, args)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
