"""The sides without the service: a naive ``docker run``, and the runner's own container
through each backend (the floors)."""

from __future__ import annotations

import dataclasses
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

from dockworker.engine import ContainerSpec, Engine
from dockworker.models import CodeSpec
from dockworker.names import PROGRESS_NAME
from dockworker.runner.contract import (
    TaskFiles,
    container_spec,
    ensure_hosts_file,
    ensure_one_stream_shell,
    write_task_files,
)
from dockworker.runner.progress import make_fifo
from dockworker.settings import load_settings
from e2e.common import CODE_NAME, STACK, CpuMeter, Summary, ms

# --- the baseline: docker run -----------------------------------------------------------------


class Baseline:
    def __init__(self, image: str, run_label: str) -> None:
        # The label costs nothing measurable; it lets the clean-up find containers an
        # interrupted run may have left.
        self.command = ["docker", "run", "--rm", "--network", "none", "--label", run_label, image, "true"]

    def one(self) -> float:
        """Seconds for one ``docker run``; raises when it fails."""
        started = time.perf_counter()
        done = subprocess.run(self.command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
        elapsed = time.perf_counter() - started
        if done.returncode != 0:
            detail = done.stderr.decode(errors="replace")[-500:]
            raise RuntimeError(f"baseline docker run failed ({done.returncode}): {detail}")
        return elapsed

    def throughput(self, tasks: int, concurrency: int, meter: CpuMeter) -> dict[str, Any]:
        return _batch(lambda: ms(self.one()), tasks, concurrency, meter)


# --- the floors: the runner's container through dockworker's adapter, no service -------------


def runner_container(work: Path, label: str, runner_id: str) -> ContainerSpec:
    """The container the runner makes for the no-op package (its own ``container_spec``), with
    this run's labels (the clean-up finds it by them)."""
    settings = load_settings(env={}, data_dir=work / "data")
    task_dir, code_dir = work / "task", work / "code"
    code_dir.mkdir(parents=True)
    (code_dir / "noop.sh").write_text("true\n")
    write_task_files(task_dir, "", None, 1000, 1000)
    # As the runner makes it: the progress FIFO bound in, the command started by the static
    # one-stream shell (Docker; the OCI backend has one pipe already and ignores it).
    files = TaskFiles(
        task_dir=task_dir,
        code_dir=code_dir,
        hosts_file=ensure_hosts_file(settings.data_dir),
        progress_fifo=make_fifo(task_dir, PROGRESS_NAME, 1000),
        one_stream_shell=ensure_one_stream_shell(settings.data_dir),
    )
    spec = container_spec(
        spec=CodeSpec(name=CODE_NAME, stack=STACK, command="true"),
        task_id="bench-floor",
        files=files,
        settings=settings,
        runner_id=runner_id,
        installation_id="bench",
    )
    key, _, value = label.partition("=")
    return dataclasses.replace(spec, labels={**spec.labels, key: value})


class Floor:
    """One backend alone: create, attach, start, read the output to its end, wait, remove, as
    ``run_container`` does. dockworker's figures minus these are what the service adds."""

    def __init__(self, name: str, engine: Engine, spec: ContainerSpec) -> None:
        self.name = name
        self.engine = engine
        self.spec = spec

    def one(self) -> dict[str, float]:
        """Milliseconds per phase, and in total; raises when the container fails."""
        t0 = time.perf_counter()
        container_id = self.engine.create(self.spec)
        t1 = time.perf_counter()
        try:
            stream = self.engine.attach(container_id)
            self.engine.start(container_id)
            t2 = time.perf_counter()
            for _ in stream:
                pass
            t3 = time.perf_counter()
            exit_info = self.engine.wait(container_id)
            t4 = time.perf_counter()
        finally:
            self.engine.remove(container_id)
        t5 = time.perf_counter()
        if exit_info.exit_code != 0:
            raise RuntimeError(f"{self.name} container failed: {exit_info}")
        return {
            "create": ms(t1 - t0),
            "attach_start": ms(t2 - t1),
            "output_eof": ms(t3 - t2),
            "wait": ms(t4 - t3),
            "remove": ms(t5 - t4),
            "total": ms(t5 - t0),
        }

    def throughput(self, tasks: int, concurrency: int, meter: CpuMeter) -> dict[str, Any]:
        return _batch(lambda: self.one()["total"], tasks, concurrency, meter)


def _batch(one_ms: Callable[[], float], tasks: int, concurrency: int, meter: CpuMeter) -> dict[str, Any]:
    """``tasks`` runs of ``one_ms`` (each returns its latency in ms) from ``concurrency`` threads."""
    meter.start()
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        latencies = list(pool.map(lambda _: one_ms(), range(tasks)))
    wall = time.perf_counter() - started
    return {
        "tasks": tasks,
        "concurrency": concurrency,
        "wall_s": wall,
        "tasks_per_s": tasks / wall,
        "latency_under_load_ms": asdict(Summary.of(latencies)),
        **meter.stop(tasks),
    }
