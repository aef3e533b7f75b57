"""Constants, small helpers and the CPU accounting of the end-to-end benchmark."""

from __future__ import annotations

import os
import resource
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

IMAGE = "dockworker/stack-busybox:1.35"
STACK = "busybox"
CODE_NAME = "bench-noop"
TASK_LABEL = "dockworker.task"
RUNNER_LABEL = "dockworker.runner"
BENCH_LABEL = "dockworker.bench"
TERMINAL = frozenset({"complete", "error", "cancelled", "killed", "timeout"})
RESULTS_DIR = Path(__file__).resolve().parents[1] / "results"  # bench/results
TASK_TIMEOUT_S = 60.0
WAIT_S = 60  # GET /tasks/{id}?wait=: the most the API allows
CLK_TCK = os.sysconf("SC_CLK_TCK")
# Issue 13's targets, each a ratio within one run (or a bound).
P50_TARGET = 1.08  # dockworker p50 <= 1.08 x its floor's
THROUGHPUT_TARGET = 0.95  # dockworker tasks/s >= 0.95 x its floor's
# issue 13, part 2: the OCI backend against the Docker floor
OCI_P50_OF_DOCKER_FLOOR = 0.3
OCI_TPUT_OF_DOCKER_FLOOR = 3.0
SERVICE_CPU_TARGET_MS = 15.0  # the service process's CPU per task (throughput batches)
PICKUP_TARGET_MS = 10.0  # queued -> claimed with a slot free
SIDES = ("baseline", "floor", "dockworker", "oci-floor", "oci-dockworker")


# --- small helpers ----------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), q in [0, 100]."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class Summary:
    n: int
    p50: float
    p90: float
    min: float
    max: float
    mean: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary:
        if not values:
            nan = float("nan")
            return cls(0, nan, nan, nan, nan, nan)
        return cls(
            n=len(values),
            p50=statistics.median(values),
            p90=percentile(values, 90),
            min=min(values),
            max=max(values),
            mean=statistics.fmean(values),
        )


def parse_time(value: str | None) -> float | None:
    """RFC 3339 as the API writes it (``2026-11-25T20:41:37.123Z``) to epoch seconds."""
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def ms(seconds: float) -> float:
    return seconds * 1000.0


def run_text(args: Sequence[str], timeout: float = 30) -> str:
    done = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, check=False)
    return done.stdout.strip() if done.returncode == 0 else ""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- CPU accounting ---------------------------------------------------------------------------


def host_cpu_busy_s() -> float:
    """Busy CPU time of the whole host (all cores) from /proc/stat, in seconds."""
    with open("/proc/stat") as stat:
        fields = [int(x) for x in stat.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / CLK_TCK


def process_cpu_s(pid: int) -> float:
    """user + system CPU of one process (all its threads), in seconds; 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            rest = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(rest[11]) + int(rest[12])) / CLK_TCK


def background_busy(seconds: float) -> float:
    """Fraction of all cores busy over ``seconds`` while we sleep: other load on the host."""
    before = host_cpu_busy_s()
    time.sleep(seconds)
    return (host_cpu_busy_s() - before) / seconds / (os.cpu_count() or 1)


def self_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass
class CpuMeter:
    """CPU used between start() and stop(): host-wide, and by the dockworker service process."""

    service_pid: int | None = None
    _host: float = 0.0
    _service: float = 0.0
    _children: float = 0.0
    _self: float = 0.0

    def start(self) -> None:
        self._host = host_cpu_busy_s()
        self._service = process_cpu_s(self.service_pid) if self.service_pid else 0.0
        self._children = children_cpu_s()
        self._self = self_cpu_s()

    def stop(self, tasks: int) -> dict[str, float]:
        per = 1000.0 / max(1, tasks)
        result = {
            "host_cpu_ms_per_task": (host_cpu_busy_s() - self._host) * per,
            "bench_children_cpu_ms_per_task": (children_cpu_s() - self._children) * per,
            "bench_self_cpu_ms_per_task": (self_cpu_s() - self._self) * per,
        }
        if self.service_pid:
            result["service_cpu_ms_per_task"] = (process_cpu_s(self.service_pid) - self._service) * per
        return result
