"""The run: its options, the sides behind one interface, latency, throughput and pick-up."""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from e2e.common import IMAGE, RESULTS_DIR, SIDES, CpuMeter, Summary, log, ms
from e2e.host import Noise
from e2e.report import fmt
from e2e.service import Service, TaskSample
from e2e.sides import Baseline, Floor

# --- the run ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    n: int
    batch: int
    slots: int
    concurrency: int
    warmup: int
    rounds: int
    learn: str
    poll_ms: float
    batch_poll_ms: float
    image: str
    sides: tuple[str, ...]
    pg_url: str
    pg_n: int
    wait_quiet_s: float

    @property
    def poll_s(self) -> float | None:
        return self.poll_ms / 1000 if self.learn == "poll" else None


def parse_options(argv: Sequence[str] | None = None) -> Options:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--n", type=int, default=30, help="measured single tasks per side (default 30)")
    parser.add_argument("--batch", type=int, default=60, help="tasks per throughput batch (default 60)")
    parser.add_argument("--slots", type=int, default=4, help="dockworker runner slots (default 4)")
    parser.add_argument(
        "--concurrency", type=int, default=4, help="baseline concurrent workers (default 4; floors: --slots)"
    )
    parser.add_argument("--warmup", type=int, default=3, help="discarded first runs per side (default 3)")
    parser.add_argument("--rounds", type=int, default=2, help="throughput rounds, alternating (default 2)")
    parser.add_argument(
        "--learn",
        choices=("wait", "poll"),
        default="wait",
        help="how the client learns that a task ended: GET /tasks/{id}?wait= (default), or polling",
    )
    parser.add_argument(
        "--poll-ms", type=float, default=5.0, help="with --learn poll: single-task poll interval (default 5)"
    )
    parser.add_argument(
        "--batch-poll-ms", type=float, default=100.0, help="with --learn poll: batch poll interval (ms)"
    )
    parser.add_argument("--image", default=IMAGE, help=f"baseline image (default {IMAGE})")
    parser.add_argument(
        "--sides",
        default=",".join(SIDES),
        help=f"which sides, comma-separated (default: all of {','.join(SIDES)}; the OCI ones are "
        "left out when this host cannot run them)",
    )
    parser.add_argument(
        "--pg",
        default="",
        metavar="URL",
        help="a PostgreSQL server (e.g. postgresql://postgres@127.0.0.1:5432/test): measure pick-up on "
        "a throwaway database of it, dropped at the end",
    )
    parser.add_argument("--pg-n", type=int, default=20, help="single tasks on PostgreSQL (default 20)")
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=120.0,
        metavar="S",
        help="first wait up to S s for a quiet host: no other containers, CPUs < 25%% busy "
        "(default 120; 0: don't wait)",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: n=5, batch=8, 1 round")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.batch, args.rounds, args.pg_n = 5, 8, 1, 5
    sides = tuple(side for side in args.sides.split(",") if side)
    unknown = set(sides) - set(SIDES)
    if unknown:
        parser.error(f"unknown sides: {', '.join(sorted(unknown))}")
    if min(args.n, args.batch, args.slots, args.concurrency, args.rounds) < 1 or args.warmup < 0:
        parser.error("--n, --batch, --slots, --concurrency and --rounds must be >= 1, --warmup >= 0")
    return Options(
        n=args.n,
        batch=args.batch,
        slots=args.slots,
        concurrency=args.concurrency,
        warmup=args.warmup,
        rounds=args.rounds,
        learn=args.learn,
        poll_ms=args.poll_ms,
        batch_poll_ms=args.batch_poll_ms,
        image=args.image,
        sides=sides,
        pg_url=args.pg,
        pg_n=args.pg_n,
        wait_quiet_s=args.wait_quiet,
    )


def oci_unavailable() -> str:
    """Why the OCI sides cannot run here ("" when they can)."""
    if os.geteuid() != 0:
        return "the OCI backend needs root"
    if shutil.which("crun") is None:
        return "crun is not installed (scripts/setup.sh installs it)"
    return ""


def rotated(names: Sequence[str], index: int) -> list[str]:
    """The sides in a different order each time, so each goes first equally often."""
    k = index % len(names)
    return [*names[k:], *names[:k]]


class Side(Protocol):
    """What a side runs: one task (latency), a batch (throughput)."""

    def single(self) -> None: ...
    def batch(self, tasks: int) -> dict[str, Any]: ...


@dataclass
class BaselineSide:
    baseline: Baseline
    concurrency: int
    meter: CpuMeter = field(default_factory=CpuMeter)
    runs: list[float] = field(default_factory=list)

    def single(self) -> None:
        self.runs.append(ms(self.baseline.one()))

    def batch(self, tasks: int) -> dict[str, Any]:
        return self.baseline.throughput(tasks, self.concurrency, self.meter)


@dataclass
class FloorSide:
    floor: Floor
    concurrency: int
    meter: CpuMeter = field(default_factory=CpuMeter)
    runs: list[dict[str, float]] = field(default_factory=list)

    def single(self) -> None:
        self.runs.append(self.floor.one())

    def batch(self, tasks: int) -> dict[str, Any]:
        return self.floor.throughput(tasks, self.concurrency, self.meter)


@dataclass
class ServiceSide:
    service: Service
    poll_s: float | None
    batch_poll_s: float | None
    samples: list[TaskSample] = field(default_factory=list)

    def single(self) -> None:
        self.samples.append(self.service.one(self.poll_s))

    def batch(self, tasks: int) -> dict[str, Any]:
        meter = CpuMeter(service_pid=self.service.pid)
        return self.service.throughput(tasks, self.batch_poll_s, meter)


def latency_summary(side: Side, warmup: int) -> dict[str, Any]:
    if isinstance(side, BaselineSide):
        return {"total_ms": asdict(Summary.of(side.runs[warmup:])), "raw_ms": side.runs}
    if isinstance(side, FloorSide):
        kept = side.runs[warmup:]
        phases = {k: asdict(Summary.of([r[k] for r in kept])) for k in (kept[0] if kept else {})}
        return {
            "total_ms": phases.get("total", asdict(Summary.of([]))),
            "phases_ms": phases,
            "raw": side.runs,
        }
    assert isinstance(side, ServiceSide)
    return service_latency(side.samples, warmup)


def service_latency(samples: Sequence[TaskSample], warmup: int) -> dict[str, Any]:
    kept = samples[warmup:]
    split_keys = sorted({k for s in kept for k in s.split_ms})
    return {
        "total_ms": asdict(Summary.of([s.latency_ms for s in kept if s.status == "complete"])),
        "failed": [asdict(s) for s in kept if s.status != "complete"],
        "infra_retried": [s.task_id for s in kept if "infra_retry" in s.events],
        "split_ms": {
            k: asdict(Summary.of([s.split_ms[k] for s in kept if k in s.split_ms])) for k in split_keys
        },
        "requests_per_task": statistics.fmean(s.polls for s in kept) if kept else 0,
        "request_rtt_ms": statistics.median(s.poll_rtt_ms for s in kept) if kept else 0,
        "service_cpu_ms_per_task": statistics.fmean(s.service_cpu_ms for s in kept) if kept else 0,
        "raw": [asdict(s) for s in samples],
    }


def measure_latency(options: Options, sides: dict[str, Side], noise: Noise) -> dict[str, Any]:
    """Single tasks, one at a time, the sides interleaved (who goes first rotates)."""
    total = options.warmup + options.n
    for i in range(total):
        for name in rotated(list(sides), i):
            sides[name].single()
        noise.sample()
        if (i + 1) % 10 == 0 or i + 1 == total:
            log(f"  latency: {i + 1}/{total} (first {options.warmup} are warm-up)")
    return {name: latency_summary(side, options.warmup) for name, side in sides.items()}


def measure_throughput(options: Options, sides: dict[str, Side], noise: Noise) -> dict[str, Any]:
    """One batch per side per round; the order rotates between rounds. A small batch per side
    first, as warm-up (discarded)."""
    for side in sides.values():
        side.batch(max(options.warmup, 1))
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in sides}
    for round_index in range(options.rounds):
        for name in rotated(list(sides), round_index):
            log(f"  throughput round {round_index + 1}/{options.rounds}: {name}")
            noise.sample()
            runs[name].append(sides[name].batch(options.batch))
    results: dict[str, Any] = {}
    for name, rounds in runs.items():
        results[name] = {
            "tasks_per_s": statistics.median(r["tasks_per_s"] for r in rounds),
            "host_cpu_ms_per_task": statistics.median(r["host_cpu_ms_per_task"] for r in rounds),
            "rounds": rounds,
        }
        if "service_cpu_ms_per_task" in rounds[0]:
            results[name]["service_cpu_ms_per_task"] = statistics.median(
                r["service_cpu_ms_per_task"] for r in rounds
            )
    return results


@contextlib.contextmanager
def throwaway_database(server_url: str, name: str) -> Iterator[str]:
    """A new database on the PostgreSQL server, dropped at the end: its URL."""
    import psycopg
    import sqlalchemy as sa

    server = sa.engine.make_url(server_url)
    libpq = server.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(libpq, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(libpq, autocommit=True, connect_timeout=5) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def measure_pg_pickup(options: Options, run_id: str, runner_id: str) -> dict[str, Any]:
    """Single tasks on a dockworker (Docker) service whose store is PostgreSQL."""
    name = f"dw_bench_{run_id.replace('-', '_').lower()}"
    with (
        throwaway_database(options.pg_url, name) as url,
        running_service(options, f"{runner_id}-pg", store_url=url) as service,
    ):
        service.upload_noop()
        samples = []
        for i in range(options.warmup + options.pg_n):
            samples.append(service.one(options.poll_s))
            if (i + 1) % 10 == 0:
                log(f"  PostgreSQL: {i + 1}/{options.warmup + options.pg_n}")
        return service_latency(samples, options.warmup)


@contextlib.contextmanager
def running_service(
    options: Options, runner_id: str, *, runtime: str = "docker", store_url: str = ""
) -> Iterator[Service]:
    service = Service(options.slots, runner_id, runtime=runtime, store_url=store_url)
    try:
        service.start()
        yield service
    finally:
        service.stop()
        with contextlib.suppress(OSError):
            RESULTS_DIR.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(service.log_path, RESULTS_DIR / f"last-service-{runtime}.log")
        shutil.rmtree(service.data_dir, ignore_errors=True)
        log(
            f"service ({runtime}) stopped (SIGTERM) in {fmt(service.shutdown_s, 2)} s; "
            f"temp dir {service.data_dir} removed: {not service.data_dir.exists()}"
        )
