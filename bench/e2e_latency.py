"""End-to-end cost of a no-op task in dockworker, next to a naive ``docker run`` loop.

A benchmark, not a test. In one invocation it measures, on the same engine and image:

* baseline: ``docker run --rm --network none IMAGE true`` through the docker CLI, one at a time
  (latency) and from C concurrent workers (throughput);
* dockworker: the real service (``dockworker up`` as a subprocess, on a temporary data dir),
  a no-op code package (stack busybox, command ``true``): single tasks queued one at a time
  and polled until complete (latency), then one batch of M tasks (throughput).

The single-task runs of the two are interleaved (alternating which goes first); the throughput
runs alternate too. The first ``--warmup`` runs of each are discarded. The figures are printed
as a table and written as JSON to ``bench/results/``. See ``bench/README.md``.

Run: ``. .venv/bin/activate && python bench/e2e_latency.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx2

IMAGE = "dockworker/stack-busybox:1.35"
STACK = "busybox"
CODE_NAME = "bench-noop"
TASK_LABEL = "dockworker.task"
RUNNER_LABEL = "dockworker.runner"
BENCH_LABEL = "dockworker.bench"
TERMINAL = frozenset({"complete", "error", "cancelled", "killed", "timeout"})
RESULTS_DIR = Path(__file__).resolve().parent / "results"
TASK_TIMEOUT_S = 60.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


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

    def start(self) -> None:
        self._host = host_cpu_busy_s()
        self._service = process_cpu_s(self.service_pid) if self.service_pid else 0.0
        self._children = children_cpu_s()

    def stop(self, tasks: int) -> dict[str, float]:
        per = 1000.0 / max(1, tasks)
        result = {
            "host_cpu_ms_per_task": (host_cpu_busy_s() - self._host) * per,
            "bench_children_cpu_ms_per_task": (children_cpu_s() - self._children) * per,
        }
        if self.service_pid:
            result["service_cpu_ms_per_task"] = (process_cpu_s(self.service_pid) - self._service) * per
        return result


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
            raise RuntimeError(f"baseline docker run failed ({done.returncode}): {done.stderr.decode()[-500:]}")
        return elapsed

    def throughput(self, tasks: int, concurrency: int, meter: CpuMeter) -> dict[str, Any]:
        meter.start()
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            latencies = list(pool.map(lambda _: self.one(), range(tasks)))
        wall = time.perf_counter() - started
        return {
            "tasks": tasks,
            "concurrency": concurrency,
            "wall_s": wall,
            "tasks_per_s": tasks / wall,
            "latency_under_load_ms": asdict(Summary.of([ms(x) for x in latencies])),
            **meter.stop(tasks),
        }


# --- dockworker: the service and its API ------------------------------------------------------


@dataclass
class TaskSample:
    """One single task, timed from the client, split with the server's own timestamps."""

    task_id: str
    status: str
    latency_ms: float
    polls: int
    poll_rtt_ms: float
    split_ms: dict[str, float] = field(default_factory=dict)


class Service:
    """``dockworker up`` in a subprocess on a temporary data dir, and an API client for it."""

    def __init__(self, slots: int, runner_id: str) -> None:
        self.slots = slots
        self.runner_id = runner_id
        self.data_dir = Path(tempfile.mkdtemp(prefix="dockworker-bench-"))
        self.port = free_port()
        self.log_path = self.data_dir / "service.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.http: httpx2.Client | None = None
        self.version = ""
        self.shutdown_s: float | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def start(self, timeout: float = 60) -> None:
        executable = Path(sys.executable).parent / "dockworker"
        command = [str(executable) if executable.exists() else shutil.which("dockworker") or "dockworker"]
        command += ["up", "--data-dir", str(self.data_dir), "--port", str(self.port), "--slots", str(self.slots)]
        env = {**os.environ, "DOCKWORKER_RUNNER_ID": self.runner_id}
        with open(self.log_path, "wb") as log_file:
            # Own session: a Ctrl-C at the terminal reaches only us; we stop it with SIGTERM.
            self.process = subprocess.Popen(
                command, stdout=log_file, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        base = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + timeout
        with httpx2.Client(base_url=base, timeout=2, trust_env=False) as probe:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"dockworker up exited with {self.process.returncode}:\n{self.log_tail()}")
                with contextlib.suppress(httpx2.TransportError):
                    response = probe.get("/version")
                    if response.status_code == 200:
                        self.version = str(response.json().get("version", ""))
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"dockworker up did not answer within {timeout} s:\n{self.log_tail()}")
                time.sleep(0.05)
        credentials = json.loads((self.data_dir / "iron.json").read_text())
        self.http = httpx2.Client(
            base_url=f"{base}/2/projects/{credentials['project_id']}",
            headers={"Authorization": f"OAuth {credentials['token']}", "Accept": "application/json"},
            timeout=30,
            trust_env=False,
        )

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        assert self.http is not None
        response = self.http.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise RuntimeError(f"{method} {path}: HTTP {response.status_code}: {response.text[:500]}")
        return response.json()

    def upload_noop(self) -> None:
        archive = io.BytesIO()
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zipped:
            zipped.writestr("noop.sh", "true\n")
        data = {"name": CODE_NAME, "stack": STACK, "command": "true"}
        files = {
            "data": (None, json.dumps(data), "application/json"),
            "file": ("code.zip", archive.getvalue(), "application/zip"),
        }
        self.call("POST", "/codes", files=files)

    def queue(self, count: int) -> list[str]:
        body = {"tasks": [{"code_name": CODE_NAME}] * count}
        return [t["id"] for t in self.call("POST", "/tasks", json=body)["tasks"]]

    def one(self, poll_s: float) -> TaskSample:
        """Queue one task and poll it until it is terminal. The latency runs from just before
        the POST to the first poll that sees the terminal status."""
        assert self.http is not None
        wall0 = time.time()
        started = time.perf_counter()
        (task_id,) = self.queue(1)
        polls, rtt = 0, 0.0
        while True:
            sent = time.perf_counter()
            task = self.call("GET", f"/tasks/{task_id}")
            seen = time.perf_counter()
            polls += 1
            rtt += seen - sent
            if task["status"] in TERMINAL:
                break
            if seen - started > TASK_TIMEOUT_S:
                raise RuntimeError(f"task {task_id} not done after {TASK_TIMEOUT_S} s: {task['status']}")
            time.sleep(poll_s)
        latency = seen - started
        sample = TaskSample(task_id, task["status"], ms(latency), polls, ms(rtt / polls))
        sample.split_ms = self._split(task, wall0, wall0 + latency)
        return sample

    def _split(self, task: dict[str, Any], posted: float, seen: float) -> dict[str, float]:
        """Where the time went, from the task's timestamps and events (read after the fact).
        Server timestamps have millisecond resolution; client and server share the clock."""
        events: dict[str, float] = {}
        for event in self.call("GET", f"/tasks/{task['id']}/events")["events"]:
            at = parse_time(event["at"])
            if at is not None:
                events.setdefault(event["kind"], at)
        created = parse_time(task["created_at"])
        start = parse_time(task["start_time"])
        end = parse_time(task["end_time"])
        claimed = events.get("claimed")
        container = events.get("container_created")
        points = [
            ("post_to_queued", posted, created),
            ("queued_to_claimed", created, claimed),
            ("claimed_to_container_created", claimed, container),
            ("container_created_to_started", container, start),
            ("started_to_finished", start, end),
            ("finished_to_seen", end, seen),
            ("queue_wait", created, start),
            ("run", start, end),
        ]
        return {name: ms(b - a) for name, a, b in points if a is not None and b is not None}

    def throughput(self, tasks: int, poll_s: float, meter: CpuMeter) -> dict[str, Any]:
        """Queue ``tasks`` in one request; time until none is queued, preparing or running."""
        meter.start()
        wall0 = time.time()
        started = time.perf_counter()
        ids = self.queue(tasks)
        pending_query = {"code_name": CODE_NAME, "queued": 1, "preparing": 1, "running": 1, "per_page": 100}
        while self.call("GET", "/tasks", params=pending_query)["tasks"]:
            if time.perf_counter() - started > TASK_TIMEOUT_S + tasks:
                raise RuntimeError("batch not done in time")
            time.sleep(poll_s)
        wall = time.perf_counter() - started
        cpu = meter.stop(tasks)
        details = [self.call("GET", f"/tasks/{task_id}") for task_id in ids]
        statuses: dict[str, int] = {}
        for task in details:
            statuses[task["status"]] = statuses.get(task["status"], 0) + 1
        ends = [t for t in (parse_time(d["end_time"]) for d in details) if t is not None]
        in_batch = [ms(t - wall0) for t in ends]
        return {
            "tasks": tasks,
            "slots": self.slots,
            "wall_s": wall,
            "tasks_per_s": tasks / wall,
            "server_last_end_s": (max(ends) - wall0) if ends else None,
            "statuses": statuses,
            "max_running_at_once": max_overlap(details),
            "queued_to_finished_ms": asdict(Summary.of(in_batch)),
            **cpu,
        }

    def stop(self) -> None:
        if self.http is not None:
            self.http.close()
            self.http = None
        process = self.process
        if process is None or process.poll() is not None:
            return
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=45)
        except subprocess.TimeoutExpired:
            log("service did not stop within 45 s of SIGTERM: sending a second SIGTERM (stop now)")
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                log("service still running: SIGKILL")
                process.kill()
                process.wait()
        self.shutdown_s = time.monotonic() - started


def max_overlap(tasks: Sequence[dict[str, Any]]) -> int:
    """The most tasks whose [start_time, end_time] intervals overlap (i.e. slots in use)."""
    edges: list[tuple[float, int]] = []
    for task in tasks:
        start, end = parse_time(task["start_time"]), parse_time(task["end_time"])
        if start is not None and end is not None:
            edges += [(start, 1), (end, -1)]
    best = current = 0
    for _, step in sorted(edges):
        current += step
        best = max(best, current)
    return best


# --- host and clean-up ------------------------------------------------------------------------


def host_info() -> dict[str, Any]:
    cpu_model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        cpu_model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "")
    return {
        "cores": os.cpu_count(),
        "cpu_model": cpu_model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "docker_server": run_text(["docker", "version", "--format", "{{.Server.Version}}"]),
        "docker_client": run_text(["docker", "version", "--format", "{{.Client.Version}}"]),
        "docker_api": run_text(["docker", "version", "--format", "{{.Server.APIVersion}}"]),
        "loadavg_start": os.getloadavg(),
    }


def containers(label_filter: str) -> list[str]:
    out = run_text(["docker", "ps", "-a", "-q", "--filter", f"label={label_filter}"])
    return out.split()


def foreign_containers(run_label: str, runner_id: str) -> int:
    """Containers on the engine that are not this run's (other work adds noise)."""
    everything = set(run_text(["docker", "ps", "-a", "-q"]).split())
    ours = set(containers(run_label)) | set(containers(f"{RUNNER_LABEL}={runner_id}"))
    return len(everything - ours)


def remove_containers(ids: Sequence[str]) -> None:
    if ids:
        subprocess.run(["docker", "rm", "-f", *ids], capture_output=True, check=False)


# --- the run ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    n: int
    batch: int
    slots: int
    concurrency: int
    warmup: int
    rounds: int
    poll_ms: float
    batch_poll_ms: float
    image: str


def parse_options(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=30, help="measured single tasks per side (default 30)")
    parser.add_argument("--batch", type=int, default=60, help="tasks per throughput batch (default 60)")
    parser.add_argument("--slots", type=int, default=4, help="dockworker runner slots (default 4)")
    parser.add_argument("--concurrency", type=int, default=4, help="baseline concurrent workers (default 4)")
    parser.add_argument("--warmup", type=int, default=3, help="discarded first runs per side (default 3)")
    parser.add_argument("--rounds", type=int, default=2, help="throughput rounds, order alternating (default 2)")
    parser.add_argument("--poll-ms", type=float, default=5.0, help="single-task poll interval (default 5)")
    parser.add_argument("--batch-poll-ms", type=float, default=25.0, help="batch poll interval (default 25)")
    parser.add_argument("--image", default=IMAGE, help=f"baseline image (default {IMAGE}, the busybox stack's)")
    parser.add_argument("--quick", action="store_true", help="smoke run: n=5, batch=8, 1 round")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.batch, args.rounds = 5, 8, 1
    if min(args.n, args.batch, args.slots, args.concurrency, args.rounds) < 1 or args.warmup < 0:
        parser.error("--n, --batch, --slots, --concurrency and --rounds must be >= 1, --warmup >= 0")
    return Options(
        n=args.n,
        batch=args.batch,
        slots=args.slots,
        concurrency=args.concurrency,
        warmup=args.warmup,
        rounds=args.rounds,
        poll_ms=args.poll_ms,
        batch_poll_ms=args.batch_poll_ms,
        image=args.image,
    )


def measure_latency(options: Options, baseline: Baseline, service: Service) -> dict[str, Any]:
    """Single tasks, one at a time, the two sides interleaved (who goes first alternates)."""
    base: list[float] = []
    samples: list[TaskSample] = []
    sides: dict[str, Callable[[], None]] = {
        "baseline": lambda: base.append(ms(baseline.one())),
        "dockworker": lambda: samples.append(service.one(options.poll_ms / 1000)),
    }
    total = options.warmup + options.n
    for i in range(total):
        order = ("baseline", "dockworker") if i % 2 == 0 else ("dockworker", "baseline")
        for side in order:
            sides[side]()
        if (i + 1) % 10 == 0 or i + 1 == total:
            log(f"  latency: {i + 1}/{total} (first {options.warmup} are warm-up)")
    kept = samples[options.warmup :]
    failed = [s for s in kept if s.status != "complete"]
    split_keys = sorted({k for s in kept for k in s.split_ms})
    return {
        "baseline_ms": asdict(Summary.of(base[options.warmup :])),
        "dockworker_ms": asdict(Summary.of([s.latency_ms for s in kept if s.status == "complete"])),
        "dockworker_failed": [asdict(s) for s in failed],
        "dockworker_split_ms": {
            k: asdict(Summary.of([s.split_ms[k] for s in kept if k in s.split_ms])) for k in split_keys
        },
        "dockworker_polls_per_task": statistics.fmean(s.polls for s in kept) if kept else 0,
        "dockworker_poll_rtt_ms": statistics.median(s.poll_rtt_ms for s in kept) if kept else 0,
        "raw": {
            "baseline_ms": base,
            "dockworker": [asdict(s) for s in samples],
            "warmup_discarded": options.warmup,
        },
    }


def measure_throughput(options: Options, baseline: Baseline, service: Service) -> dict[str, Any]:
    meter_base = CpuMeter()
    meter_dw = CpuMeter(service_pid=service.pid)
    # Warm-up: a small discarded batch on each side.
    warm = max(options.warmup, 1)
    baseline.throughput(warm, options.concurrency, meter_base)
    service.throughput(warm, options.batch_poll_ms / 1000, meter_dw)
    runs: dict[str, list[dict[str, Any]]] = {"baseline": [], "dockworker": []}
    for round_index in range(options.rounds):
        order = ("baseline", "dockworker") if round_index % 2 == 0 else ("dockworker", "baseline")
        for side in order:
            log(f"  throughput round {round_index + 1}/{options.rounds}: {side}")
            if side == "baseline":
                runs[side].append(baseline.throughput(options.batch, options.concurrency, meter_base))
            else:
                runs[side].append(service.throughput(options.batch, options.batch_poll_ms / 1000, meter_dw))
    return {
        side: {
            "tasks_per_s": statistics.median(r["tasks_per_s"] for r in results),
            "host_cpu_ms_per_task": statistics.median(r["host_cpu_ms_per_task"] for r in results),
            "rounds": results,
        }
        for side, results in runs.items()
    }


def fmt(value: float | None, digits: int = 1) -> str:
    if value is None or value != value:  # None or NaN
        return "-"
    return f"{value:.{digits}f}"


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "-"


def render(result: dict[str, Any]) -> str:
    host, options = result["host"], result["options"]
    lat, thr = result["latency"], result["throughput"]
    b, d = lat["baseline_ms"], lat["dockworker_ms"]
    tb, td = thr["baseline"], thr["dockworker"]
    rows = [
        ("latency p50 (ms)", b["p50"], d["p50"], ratio(d["p50"], b["p50"])),
        ("latency p90 (ms)", b["p90"], d["p90"], ratio(d["p90"], b["p90"])),
        ("latency min (ms)", b["min"], d["min"], ratio(d["min"], b["min"])),
        ("latency max (ms)", b["max"], d["max"], ratio(d["max"], b["max"])),
        ("throughput (tasks/s)", tb["tasks_per_s"], td["tasks_per_s"], ratio(td["tasks_per_s"], tb["tasks_per_s"])),
        (
            "host CPU per task (ms)",
            tb["host_cpu_ms_per_task"],
            td["host_cpu_ms_per_task"],
            ratio(td["host_cpu_ms_per_task"], tb["host_cpu_ms_per_task"]),
        ),
    ]
    lines = [
        f"host: {host['cores']} cores ({host['cpu_model']}), kernel {host['kernel']}, Python {host['python']}",
        f"docker: engine {host['docker_server']} (API {host['docker_api']}), CLI {host['docker_client']}; "
        f"dockworker {result['dockworker_version']}",
        f"run: n={options['n']} single tasks per side (+{options['warmup']} warm-up discarded, interleaved), "
        f"batch={options['batch']} x {options['rounds']} round(s), slots={options['slots']}, "
        f"baseline concurrency={options['concurrency']}, poll {fmt(options['poll_ms'], 0)} ms",
        f"baseline: {' '.join(result['baseline_command'])}",
        "",
        f"{'':24}{'baseline':>12}{'dockworker':>12}{'dw / base':>12}",
    ]
    lines += [f"{name:24}{fmt(x):>12}{fmt(y):>12}{r:>12}" for name, x, y, r in rows]
    lines += [
        "",
        "latency ratio > 1: dockworker is slower; throughput ratio > 1: dockworker is faster.",
        "",
        "dockworker single task, where the time goes (server timestamps, ms, p50 / p90):",
    ]
    split = lat["dockworker_split_ms"]
    for key in (
        "post_to_queued",
        "queued_to_claimed",
        "claimed_to_container_created",
        "container_created_to_started",
        "started_to_finished",
        "finished_to_seen",
        "queue_wait",
        "run",
    ):
        if key in split:
            lines.append(f"  {key:32}{fmt(split[key]['p50']):>8}{fmt(split[key]['p90']):>8}")
    lines.append(
        f"  polls per task {fmt(lat['dockworker_polls_per_task'])}, poll round trip p50 "
        f"{fmt(lat['dockworker_poll_rtt_ms'], 2)} ms"
    )
    lines.append("")
    for side in ("baseline", "dockworker"):
        for index, run in enumerate(thr[side]["rounds"], 1):
            extra = (
                f", max running at once {run['max_running_at_once']}, statuses {run['statuses']}"
                if side == "dockworker"
                else ""
            )
            service_cpu = run.get("service_cpu_ms_per_task")
            lines.append(
                f"throughput {side:10} round {index}: {run['tasks']} tasks in {fmt(run['wall_s'], 2)} s = "
                f"{fmt(run['tasks_per_s'], 2)}/s, host CPU {fmt(run['host_cpu_ms_per_task'], 0)} ms/task"
                + (f" (service process {fmt(service_cpu, 0)})" if service_cpu is not None else "")
                + extra
            )
    if lat["dockworker_failed"]:
        lines.append(f"WARNING: {len(lat['dockworker_failed'])} dockworker single task(s) did not complete")
    lines.append(
        f"load average start {host['loadavg_start'][0]:.2f}, end {host['loadavg_end'][0]:.2f}; "
        f"other containers on the engine at start/end: {result['foreign_containers']}"
    )
    return "\n".join(lines)


@contextlib.contextmanager
def running_service(options: Options, runner_id: str) -> Iterator[Service]:
    service = Service(options.slots, runner_id)
    try:
        service.start()
        yield service
    finally:
        service.stop()
        with contextlib.suppress(OSError):
            RESULTS_DIR.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(service.log_path, RESULTS_DIR / "last-service.log")
        shutil.rmtree(service.data_dir, ignore_errors=True)
        log(
            f"service stopped (SIGTERM) in {fmt(service.shutdown_s, 2)} s; "
            f"temp dir {service.data_dir} removed: {not service.data_dir.exists()}"
        )


def check_clean(run_label: str) -> dict[str, Any]:
    remove_containers(containers(run_label))  # baseline leftovers, if a run was interrupted
    left = containers(TASK_LABEL)
    return {"dockworker_task_containers_left": left, "baseline_containers_left": containers(run_label)}


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_options(argv)
    if not run_text(["docker", "image", "inspect", "--format", "{{.Id}}", options.image]):
        log(f"image {options.image} not found: build it with 'dockworker stacks build busybox'")
        return 2
    run_id = f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"
    run_label = f"{BENCH_LABEL}={run_id}"
    runner_id = f"bench-{run_id}"
    host = host_info()
    foreign = [foreign_containers(run_label, runner_id)]
    if containers(TASK_LABEL):
        log("note: containers labelled dockworker.task exist already (another runner is at work); see README")
    baseline = Baseline(options.image, run_label)
    result: dict[str, Any] = {"run_id": run_id, "options": asdict(options), "host": host}
    result["baseline_command"] = baseline.command
    try:
        with running_service(options, runner_id) as service:
            service.upload_noop()
            result["dockworker_version"] = service.version
            log(f"dockworker {service.version} up on port {service.port} (pid {service.pid}, {options.slots} slots)")
            result["latency"] = measure_latency(options, baseline, service)
            result["throughput"] = measure_throughput(options, baseline, service)
            foreign.append(foreign_containers(run_label, runner_id))
    finally:
        clean = check_clean(run_label)
    host["loadavg_end"] = os.getloadavg()
    result["foreign_containers"] = foreign
    result["cleanup"] = clean
    print(render(result))
    left = clean["dockworker_task_containers_left"]
    print(
        f"\nclean-up: docker ps -a --filter label={TASK_LABEL}: "
        + ("empty" if not left else f"NOT EMPTY: {' '.join(left)}")
    )
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"e2e_latency-{run_id}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"figures written to {out}")
    return 0 if not left else 1


if __name__ == "__main__":
    sys.exit(main())
