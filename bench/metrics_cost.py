"""What ``/metrics`` costs per task: the scrape's time against the number of tasks that ran since
the last scrape, and what the runner's engine metering adds to each container.

A benchmark, not a test. For each store (SQLite in a temporary directory; PostgreSQL in a
throwaway database with ``--store postgresql://USER@HOST/EMPTY_DB``), it runs ``N`` tasks through
the real store methods a runner calls (claim, running, finish: the events /metrics observes),
then times one scrape through the application in process, for N in ``--batches``; the extra
time over a scrape with nothing new, divided by N, is the cost per task. The metering of the
engine is timed on a no-op engine (the wrapper's own cost per create+start, next to the calls
without it). It prints figures and asserts nothing.

Run: ``. .venv/bin/activate && python bench/metrics_cost.py`` (``--store postgresql://...``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from fastapi.testclient import TestClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dockworker.api import create_app
from dockworker.engine.types import ContainerSpec
from dockworker.models import CodeSpec, NewTask, TaskOutcome
from dockworker.runner.metering import MeteredEngine
from dockworker.runner.prometheus import RunnerMetrics
from dockworker.settings import load_settings
from dockworker.states import TaskStatus
from dockworker.store import Store, open_store


def run_tasks(store: Store, project: str, count: int) -> None:
    store.enqueue(project, [NewTask(code_name="bench", timeout=60) for _ in range(count)], 3600)
    for _ in range(count):
        task = store.claim("bench-runner", ["default"], 30)
        assert task is not None
        store.mark_running(task.id, "bench-runner", time.time(), "c" * 64)
        store.finish(task.id, "bench-runner", TaskOutcome(status=TaskStatus.COMPLETE, msg="", exit_code=0))


def scrape(client: TestClient, token: str) -> float:
    started = time.perf_counter()
    answer = client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
    took = time.perf_counter() - started
    assert answer.status_code == 200, answer.text
    return took


def measure_store(url: str, batches: list[int], repeat: int) -> None:
    store = open_store(url)
    store.migrate()
    try:
        admin, _ = store.create_token(None, "bench")
        project = store.create_project("bench").id
        store.save_code(project, CodeSpec(name="bench", stack="busybox", command="true"), None, None)
        settings = load_settings(env={}, data_dir=Path(tempfile.mkdtemp()), store_url=url)
        with TestClient(create_app(settings, store)) as client:
            scrape(client, admin)  # warm-up: the first scrape starts the observation
            idle = statistics.median(scrape(client, admin) for _ in range(repeat))
            print(f"  scrape with nothing new: {idle * 1000:.1f} ms")
            for count in batches:
                times = []
                for _ in range(repeat):
                    run_tasks(store, project, count)
                    times.append(scrape(client, admin))
                took = statistics.median(times)
                per_task = max(0.0, took - idle) / count
                print(
                    f"  scrape after {count:>5} tasks ran: {took * 1000:7.1f} ms"
                    f"  -> {per_task * 1e6:6.1f} us per task"
                )
    finally:
        store.close()


class NoOpEngine:
    """Answers at once: what is timed is the metering around it."""

    def create(self, spec: ContainerSpec) -> str:
        return "c"

    def start(self, container_id: str) -> None:
        pass

    def remove(self, container_id: str) -> None:
        pass


def measure_metering(calls: int) -> None:
    from prometheus_client import CollectorRegistry

    bare = NoOpEngine()
    metered = MeteredEngine(bare, RunnerMetrics(CollectorRegistry()))  # type: ignore[arg-type]
    spec = ContainerSpec(image="x", command=["true"])
    for name, engine in (("without metering", bare), ("with metering", metered)):
        started = time.perf_counter()
        for _ in range(calls):
            container = engine.create(spec)
            engine.start(container)
        took = (time.perf_counter() - started) / calls
        print(f"  create+start {name}: {took * 1e6:.2f} us")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--store", help="postgresql://... (an empty database); default: SQLite only")
    parser.add_argument("--batches", default="100,1000", help="tasks between scrapes (comma-separated)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    with tempfile.TemporaryDirectory() as directory:
        print("SQLite:")
        measure_store(f"sqlite:///{directory}/bench.db", batches, args.repeat)
    if args.store:
        print("PostgreSQL:")
        measure_store(args.store, batches, args.repeat)
    print("engine metering (a no-op engine, 100,000 calls):")
    measure_metering(100_000)


if __name__ == "__main__":
    main()
