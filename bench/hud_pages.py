"""How long the HUD's pages and /metrics take with many tasks in the store.

A benchmark, not a test. It makes a store (SQLite in a temporary directory, or a throwaway
PostgreSQL database with ``--store postgresql://...``), fills it with ``--tasks`` tasks (default
100,000) of 10 code packages in two projects, spread over the last 30 days in every status, with
a log for each ended task of the first package, then times each page through the application
(Starlette's test client, in process: no network, so the figures are the server's work). It
prints the median and the worst of ``--runs`` requests per page (after one warm-up).

Run: ``. .venv/bin/activate && python bench/hud_pages.py`` (``--tasks 10000`` for a quick run).
"""

from __future__ import annotations

import argparse
import random
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa
from fastapi.testclient import TestClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dockworker import ids
from dockworker.api import create_app
from dockworker.models import CodeSpec
from dockworker.settings import load_settings
from dockworker.store import Store, open_store
from dockworker.store.schema import task_events, task_log_chunks, tasks

STATUSES = ["complete"] * 70 + ["error"] * 10 + ["cancelled"] * 5 + ["timeout"] * 3 + ["killed"] * 2
STATUSES += ["queued"] * 8 + ["running"] * 2
CLUSTERS = ["default", "default", "default", "gpu", "batch"]
PACKAGES = 10
BATCH = 5000


def fill(store: Store, count: int) -> tuple[str, str, list[str], str]:
    main, other = store.create_project("busy"), store.create_project("other")
    codes = []
    for index in range(PACKAGES):
        project = main if index < PACKAGES - 1 else other
        code = store.save_code(
            project.id, CodeSpec(name=f"package-{index}", stack="busybox", command="true"), None, None
        )
        codes.append((project.id, code))
    now = time.time()
    rng = random.Random(7)
    engine: sa.Engine = store.engine  # type: ignore[attr-defined]
    sample_task = ""
    for start in range(0, count, BATCH):
        rows, logs, events = [], [], []
        for _ in range(min(BATCH, count - start)):
            project_id, code = codes[min(int(rng.expovariate(0.4)), PACKAGES - 1)]
            status = rng.choice(STATUSES)
            created = now - rng.uniform(0, 30 * 86400)
            started = created + rng.uniform(0.05, 30) if status not in ("queued", "cancelled") else None
            ended = started + rng.uniform(0.1, 600) if started is not None and status != "running" else None
            task_id = ids.new_id()
            rows.append(
                dict(
                    id=task_id,
                    project_id=project_id,
                    code_id=code.id,
                    code_name=code.name,
                    code_rev=1,
                    revision_id=code.latest_revision.id,
                    status=status,
                    msg=None,
                    priority=rng.choice((0, 0, 0, 1, 2)),
                    timeout=3600,
                    delay=0,
                    label=None,
                    cluster=rng.choice(CLUSTERS),
                    payload='{"n": 1, "password": "x"}',
                    created_at=created,
                    updated_at=ended or created,
                    run_at=created,
                    start_time=started,
                    end_time=ended,
                    retry_count=0,
                    attempts=1 if started else 0,
                    log_size=12 if ended is not None and code.name == "package-0" else 0,
                )
            )
            events.append(dict(task_id=task_id, at=created, kind="queued", detail=""))
            if ended is not None and code.name == "package-0":
                logs.append(dict(task_id=task_id, seq=0, start=0, data=b"hello world\n"))
                sample_task = task_id
        with engine.begin() as conn:
            conn.execute(tasks.insert(), rows)
            conn.execute(task_events.insert(), events)
            if logs:
                conn.execute(task_log_chunks.insert(), logs)
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql("ANALYZE")
    else:
        with engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE")
    return main.id, codes[0][1].id, [c.id for _, c in codes], sample_task


def timed(
    client: TestClient, url: str, runs: int, headers: dict[str, str] | None = None
) -> tuple[float, float, float]:
    """The first request (analytics are then computed, not yet recent), the median and the
    worst of the next ``runs``, in milliseconds."""
    began = time.perf_counter()
    answer = client.get(url, headers=headers or {})
    first = time.perf_counter() - began
    assert answer.status_code == 200, (url, answer.status_code, answer.text[:300])
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        answer = client.get(url, headers=headers or {})
        times.append(time.perf_counter() - began)
        assert answer.status_code == 200
    return first * 1000, statistics.median(times) * 1000, max(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument(
        "--store", help="a PostgreSQL URL of an empty database (default: SQLite in a temp dir)"
    )
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        settings = load_settings(env={}, data_dir=Path(directory), store_url=options.store)
        store = open_store(settings.database_url)
        store.migrate()
        began = time.perf_counter()
        project_id, code_id, _, task_id = fill(store, options.tasks)
        dialect = settings.database_url.split(":")[0]
        print(f"{options.tasks:,} tasks in {dialect}, filled in {time.perf_counter() - began:.1f} s")
        admin, _ = store.create_token(None, "bench")
        with TestClient(create_app(settings, store)) as client:
            nonce = re.search(r'name="nonce" value="([^"]+)"', client.get("/hud/").text)
            assert nonce is not None
            client.post("/hud/login", data={"token": admin, "nonce": nonce[1]})
            base = f"/hud/projects/{project_id}"
            pages = {
                "project page (counts per package)": base,
                "task list, page 1": f"{base}/codes/{code_id}/tasks",
                "task list, page 50": f"{base}/codes/{code_id}/tasks?page=49",
                "task list, status=killed": f"{base}/codes/{code_id}/tasks?status=killed",
                "task page": f"{base}/tasks/{task_id}",
                "code list": f"{base}/codes",
                "analytics, per day and cluster": f"{base}/analytics",
                "analytics, per hour and package": f"{base}/analytics?by=hour&group=code",
                "usage per month": f"{base}/usage",
            }
            print(f"{'page':<36} {'first ms':>9} {'median ms':>10} {'worst ms':>9}")
            for name, url in pages.items():
                first, median, worst = timed(client, url, options.runs)
                print(f"{name:<36} {first:>9.1f} {median:>10.1f} {worst:>9.1f}")
            first, median, worst = timed(
                client, "/metrics", options.runs, {"Authorization": f"Bearer {admin}"}
            )
            print(f"{'/metrics':<36} {first:>9.1f} {median:>10.1f} {worst:>9.1f}")
        store.close()


if __name__ == "__main__":
    main()
