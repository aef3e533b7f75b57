"""A no-op task on the OCI backend next to the Docker floor, in one run.

Both sides run the container the runner makes for a no-op code package (stack busybox, command
``true``; the spec comes from the runner's own ``container_spec``: read-only root, no network,
uid 1000, capabilities dropped, no-new-privileges, limits, init, the payload/code/hosts binds and
the /tmp and task-dir tmpfs) through the runner's own ``run_container``: create, attach, start,
supervise until the output ends, wait, remove. No store, no API.

* latency: ``--runs`` single tasks per side, interleaved (the side that goes first alternates),
  after ``--warmup`` discarded ones; p50, p90, min, max.
* throughput: ``--batch`` tasks per side from ``--concurrency`` threads (the runner's slots),
  sides alternating for ``--rounds`` rounds; the median round.

It prints the ratios the OCI backend is held to: p50 <= 0.3 x the Docker floor's, throughput
>= 3 x. It asserts nothing (pytest does not collect bench/). Needs root, the Docker engine, the
busybox stack image, and crun or runc (``--runtime``; ``--runtime both`` measures both)."""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from e2e.sides import runner_container

from dockworker.engine import ContainerSpec, DockerEngine
from dockworker.engine.oci import OciEngine
from dockworker.runner.container_run import run_container
from dockworker.states import TaskStatus

LATENCY_TARGET = 0.3
THROUGHPUT_TARGET = 3.0


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summary(values: Sequence[float]) -> dict[str, float]:
    return {
        "p50": percentile(values, 0.5),
        "p90": percentile(values, 0.9),
        "min": min(values),
        "max": max(values),
    }


def host_busy_s() -> float:
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class Side:
    """One engine running the runner's no-op container."""

    def __init__(self, name: str, engine: Any, spec: ContainerSpec) -> None:
        self.name = name
        self.engine = engine
        self.spec = spec

    def one(self) -> float:
        started = time.perf_counter()
        result = run_container(
            self.engine,
            self.spec,
            sink=lambda data, consumed: None,
            timeout_s=60,
            stop=threading.Event(),
            name=f"bench-{self.name}",
        )
        elapsed = (time.perf_counter() - started) * 1000
        if result.outcome.status is not TaskStatus.COMPLETE:
            raise RuntimeError(f"{self.name}: the no-op task ended {result.outcome}")
        return elapsed

    def batch(self, tasks: int, concurrency: int) -> dict[str, float]:
        busy = host_busy_s()
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            latencies = list(pool.map(lambda _: self.one(), range(tasks)))
        wall = time.perf_counter() - started
        return {
            "tasks_per_s": tasks / wall,
            "latency_p50_ms": percentile(latencies, 0.5),
            "host_cpu_ms_per_task": (host_busy_s() - busy) / tasks * 1000,
        }


def task_spec(work: Path) -> ContainerSpec:
    """The container the runner makes for a no-op busybox package (the e2e benchmark's floor)."""
    return runner_container(work, "dockworker.bench=oci-latency", "bench")


def interleaved(sides: Sequence[Side], runs: int, warmup: int) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {side.name: [] for side in sides}
    for index in range(warmup + runs):
        order = list(sides) if index % 2 == 0 else list(reversed(sides))
        for side in order:
            value = side.one()
            if index >= warmup:
                samples[side.name].append(value)
    return samples


def rounds(sides: Sequence[Side], batch: int, concurrency: int, count: int) -> dict[str, dict[str, float]]:
    for side in sides:
        side.batch(max(concurrency, batch // 10), concurrency)  # warm-up, discarded
    results: dict[str, list[dict[str, float]]] = {side.name: [] for side in sides}
    for index in range(count):
        order = list(sides) if index % 2 == 0 else list(reversed(sides))
        for side in order:
            results[side.name].append(side.batch(batch, concurrency))
    return {
        name: {key: statistics.median(r[key] for r in runs) for key in runs[0]}
        for name, runs in results.items()
    }


def report(latency: dict[str, list[float]], throughput: dict[str, dict[str, float]], base: str) -> str:
    lines = [
        f"{'side':12s} {'p50 ms':>8s} {'p90 ms':>8s} {'min':>7s} {'max':>7s} "
        f"{'tasks/s':>8s} {'cpu ms/task':>11s} {'p50 ratio':>9s} {'tput ratio':>10s}"
    ]
    base_p50 = percentile(latency[base], 0.5)
    base_tput = throughput[base]["tasks_per_s"]
    for name, values in latency.items():
        stats = summary(values)
        tput = throughput[name]
        lines.append(
            f"{name:12s} {stats['p50']:8.1f} {stats['p90']:8.1f} {stats['min']:7.1f} {stats['max']:7.1f} "
            f"{tput['tasks_per_s']:8.1f} {tput['host_cpu_ms_per_task']:11.1f} "
            f"{stats['p50'] / base_p50:9.2f} {tput['tasks_per_s'] / base_tput:10.2f}"
        )
    lines.append(
        f"targets for the OCI backend: p50 ratio <= {LATENCY_TARGET}, throughput ratio >= {THROUGHPUT_TARGET}"
    )
    for name in latency:
        if name == base:
            continue
        p50_ratio = percentile(latency[name], 0.5) / base_p50
        tput_ratio = throughput[name]["tasks_per_s"] / base_tput
        verdict = "met" if p50_ratio <= LATENCY_TARGET and tput_ratio >= THROUGHPUT_TARGET else "NOT met"
        lines.append(f"{name}: p50 x{p50_ratio:.2f}, throughput x{tput_ratio:.2f}: {verdict}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch", type=int, default=60)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--runtime", choices=("crun", "runc", "both"), default="crun")
    parser.add_argument("--quick", action="store_true", help="a smoke run: few runs, small batches")
    args = parser.parse_args(argv)
    if args.quick:
        args.runs, args.warmup, args.batch, args.rounds = 5, 1, 8, 1
    work = Path(tempfile.mkdtemp(prefix="dockworker-oci-bench-"))
    docker = DockerEngine(pool_size=16)
    closers: list[Callable[[], None]] = [docker.close]
    try:
        spec = task_spec(work)
        sides = [Side("docker", docker, spec)]
        for runtime in ("crun", "runc") if args.runtime == "both" else (args.runtime,):
            oci = OciEngine(work / f"oci-{runtime}", docker, runtime=runtime)
            closers.append(oci.close)
            sides.append(Side(f"oci-{runtime}", oci, spec))
        print(
            f"latency: {args.runs} runs per side, interleaved, after {args.warmup} warm-up runs", flush=True
        )
        latency = interleaved(sides, args.runs, args.warmup)
        print(
            f"throughput: {args.rounds} rounds of {args.batch} tasks per side, {args.concurrency} threads",
            flush=True,
        )
        throughput = rounds(sides, args.batch, args.concurrency, args.rounds)
        print(report(latency, throughput, "docker"))
    finally:
        for close in closers:
            close()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
