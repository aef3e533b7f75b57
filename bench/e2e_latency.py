"""End-to-end cost of a no-op task in dockworker, next to a naive ``docker run`` loop.

A benchmark, not a test. In one invocation it measures, on the same engine and image:

* baseline: ``docker run --rm --network none IMAGE true`` through the docker CLI, one at a time
  (latency) and from C concurrent workers (throughput);
* dockworker: the real service (``dockworker up`` as a subprocess, on a temporary data dir),
  a no-op code package (stack busybox, command ``true``): single tasks queued one at a time
  and polled until complete (latency), then one batch of M tasks (throughput);
* the engine floor (skip with ``--no-floor``): the container the runner makes, created, run
  and removed through dockworker's own engine adapter, without the service; dockworker's
  figures minus these are what the service itself adds.

The single-task runs of the sides are interleaved (who goes first rotates); so are the
throughput rounds. The first ``--warmup`` runs of each side are discarded. The figures are
printed as a table and written as JSON to ``bench/results/``. See ``bench/README.md``.

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

from dockworker.engine import Bind, ContainerSpec, DockerEngine

IMAGE = "dockworker/stack-busybox:1.35"
STACK = "busybox"
CODE_NAME = "bench-noop"
TASK_LABEL = "dockworker.task"
RUNNER_LABEL = "dockworker.runner"
BENCH_LABEL = "dockworker.bench"
TERMINAL = frozenset({"complete", "error", "cancelled", "killed", "timeout"})
RESULTS_DIR = Path(__file__).resolve().parent / "results"
TASK_TIMEOUT_S = 60.0
WAIT_S = 60  # GET /tasks/{id}?wait=: the most the API allows
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


# --- the engine floor: dockworker's container settings, no service -------------------------


class Floor:
    """The engine alone, through dockworker's own adapter, with the container the runner makes
    (network disabled, read-only root, limits, init, the task/code/hosts bind mounts, a /tmp
    tmpfs): create, attach, start, read the output to EOF, wait (+inspect), remove. No store,
    no API, no polling. dockworker's figures minus these are what the service adds."""

    def __init__(self, image: str, run_label: str, work_dir: Path) -> None:
        key, _, value = run_label.partition("=")
        task_dir, code_dir, hosts = work_dir / "task", work_dir / "code", work_dir / "hosts"
        for directory in (task_dir, code_dir):
            directory.mkdir(parents=True, exist_ok=True)
            directory.chmod(0o777)
        (task_dir / "payload.json").write_text("")
        (code_dir / "noop.sh").write_text("true\n")
        hosts.write_text("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")
        for path in (task_dir / "payload.json", code_dir / "noop.sh", hosts):
            path.chmod(0o644)
        self.engine = DockerEngine(pool_size=16)
        self.spec = ContainerSpec(
            image=image,
            command=["true"],
            env={"TASK_ID": "floor", "TASK_DIR": "/mnt/task", "HOME": "/mnt/task", "CODE_DIR": "/mnt/code"},
            labels={key: value},
            binds=(
                Bind(source=str(task_dir), target="/mnt/task", read_only=False),
                Bind(source=str(hosts), target="/etc/hosts"),
                Bind(source=str(code_dir), target="/mnt/code"),
            ),
            working_dir="/mnt/code",
            tmpfs={"/tmp": "rw,nosuid,nodev,size=64m,mode=1777"},
        )

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
            raise RuntimeError(f"floor container failed: {exit_info}")
        return {
            "create": ms(t1 - t0),
            "attach_start": ms(t2 - t1),
            "output_eof": ms(t3 - t2),
            "wait_inspect": ms(t4 - t3),
            "remove": ms(t5 - t4),
            "total": ms(t5 - t0),
        }

    def throughput(self, tasks: int, concurrency: int, meter: CpuMeter) -> dict[str, Any]:
        meter.start()
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            totals = [r["total"] for r in pool.map(lambda _: self.one(), range(tasks))]
        wall = time.perf_counter() - started
        return {
            "tasks": tasks,
            "concurrency": concurrency,
            "wall_s": wall,
            "tasks_per_s": tasks / wall,
            "latency_under_load_ms": asdict(Summary.of(totals)),
            **meter.stop(tasks),
        }

    def close(self) -> None:
        self.engine.close()


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
    events: list[str] = field(default_factory=list)


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
        command += ["up", "--data-dir", str(self.data_dir), "--port", str(self.port)]
        command += ["--slots", str(self.slots)]
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
                    code = self.process.returncode
                    raise RuntimeError(f"dockworker up exited with {code}:\n{self.log_tail()}")
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

    def one(self, poll_s: float | None) -> TaskSample:
        """Queue one task and learn when it ends: with ``GET /tasks/{id}?wait=`` (one request
        that the server answers when the task ends), or, with ``poll_s``, by polling. The
        latency runs from just before the POST to the answer that shows the terminal status."""
        assert self.http is not None
        wall0 = time.time()
        started = time.perf_counter()
        (task_id,) = self.queue(1)
        polls, rtt = 0, 0.0
        params = {"wait": WAIT_S} if poll_s is None else None
        while True:
            sent = time.perf_counter()
            task = self.call("GET", f"/tasks/{task_id}", params=params)
            seen = time.perf_counter()
            polls += 1
            rtt += seen - sent
            if task["status"] in TERMINAL:
                break
            if seen - started > TASK_TIMEOUT_S:
                raise RuntimeError(f"task {task_id} not done after {TASK_TIMEOUT_S} s: {task['status']}")
            if poll_s is not None:
                time.sleep(poll_s)
        latency = seen - started
        sample = TaskSample(task_id, task["status"], ms(latency), polls, ms(rtt / polls))
        kinds = self.call("GET", f"/tasks/{task_id}/events")["events"]
        sample.events = [e["kind"] for e in kinds]
        sample.split_ms = self._split(task, kinds, wall0, wall0 + latency)
        return sample

    @staticmethod
    def _split(
        task: dict[str, Any], kinds: list[dict[str, Any]], posted: float, seen: float
    ) -> dict[str, float]:
        """Where the time went, from the task's timestamps and events (read after the fact).
        Server timestamps have millisecond resolution; client and server share the clock."""
        events: dict[str, float] = {}
        for event in kinds:
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
            ("post_to_finished", posted, end),
        ]
        return {name: ms(b - a) for name, a, b in points if a is not None and b is not None}

    def throughput(self, tasks: int, poll_s: float | None, meter: CpuMeter) -> dict[str, Any]:
        """Queue ``tasks`` in one request; the batch is done when the last task has finished
        (its end_time; the server's clock is ours). The client learns that by waiting for each
        task in turn (``?wait=``), or, with ``poll_s``, by polling the list of unfinished tasks;
        its detection time is reported too."""
        meter.start()
        wall0 = time.time()
        started = time.perf_counter()
        ids = self.queue(tasks)
        if poll_s is None:
            for task_id in ids:  # one request each: answered when that task has ended
                waited = {"wait": WAIT_S}
                while self.call("GET", f"/tasks/{task_id}", params=waited)["status"] not in TERMINAL:
                    if time.perf_counter() - started > TASK_TIMEOUT_S + tasks:
                        raise RuntimeError("batch not done in time")
        else:
            pending = {"code_name": CODE_NAME, "queued": 1, "preparing": 1, "running": 1, "per_page": 100}
            while self.call("GET", "/tasks", params=pending)["tasks"]:
                if time.perf_counter() - started > TASK_TIMEOUT_S + tasks:
                    raise RuntimeError("batch not done in time")
                time.sleep(poll_s)
        seen = time.perf_counter() - started
        cpu = meter.stop(tasks)
        details = [self.call("GET", f"/tasks/{task_id}") for task_id in ids]
        claimed: dict[str, float] = {}
        for task in details:
            events = self.call("GET", f"/tasks/{task['id']}/events")["events"]
            at = next((parse_time(e["at"]) for e in events if e["kind"] == "claimed"), None)
            if at is not None:
                claimed[task["id"]] = at
            if task["status"] != "complete":
                task["events"] = events
        statuses: dict[str, int] = {}
        for task in details:
            statuses[task["status"]] = statuses.get(task["status"], 0) + 1
        problems = [
            {k: d.get(k) for k in ("id", "status", "msg", "exit_code", "start_time", "end_time", "events")}
            for d in details
            if d["status"] != "complete"
        ]
        ends = [t for t in (parse_time(d["end_time"]) for d in details) if t is not None]
        done = (max(ends) - wall0) if len(ends) == tasks else seen
        busy = [
            (claimed[d["id"]], end)
            for d in details
            if d["id"] in claimed and (end := parse_time(d["end_time"]))
        ]
        return {
            "tasks": tasks,
            "slots": self.slots,
            "wall_s": done,
            "tasks_per_s": tasks / done,
            "client_seen_s": seen,
            "statuses": statuses,
            "not_complete": problems,
            "max_slots_busy": max_overlap(busy),
            "mean_slots_busy": sum(b - a for a, b in busy) / done,
            "queued_to_finished_ms": asdict(Summary.of([ms(t - wall0) for t in ends])),
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


def max_overlap(intervals: Sequence[tuple[float, float]]) -> int:
    """The most intervals that overlap at one moment (claimed..finished: slots in use)."""
    edges: list[tuple[float, int]] = []
    for start, end in intervals:
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
        models = (line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
        cpu_model = next(models, "")
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


@dataclass
class Noise:
    """Counts containers on the engine that are not this run's: other work on a shared engine
    competes for the 2 cores. Sampled between measurements, never inside one."""

    run_label: str
    runner_id: str
    samples: list[int] = field(default_factory=list)

    def foreign(self) -> int:
        everything = set(run_text(["docker", "ps", "-a", "-q"]).split())
        ours = set(containers(self.run_label)) | set(containers(f"{RUNNER_LABEL}={self.runner_id}"))
        return len(everything - ours)

    def sample(self) -> int:
        count = self.foreign()
        self.samples.append(count)
        return count

    def wait_quiet(self, timeout: float, quiet_checks: int = 3, max_busy: float = 0.25) -> bool:
        """Wait until, for ``quiet_checks`` seconds in a row, no foreign container exists and
        the host's CPUs are less than ``max_busy`` busy."""
        deadline = time.monotonic() + timeout
        streak = 0
        while time.monotonic() < deadline:
            quiet = self.foreign() == 0 and background_busy(1.0) < max_busy
            streak = streak + 1 if quiet else 0
            if streak >= quiet_checks:
                return True
        return False

    def summary(self) -> dict[str, Any]:
        busy = sum(1 for c in self.samples if c)
        return {
            "samples": len(self.samples),
            "samples_with_foreign": busy,
            "max_foreign": max(self.samples or [0]),
        }


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
    learn: str
    poll_ms: float
    batch_poll_ms: float
    image: str
    floor: bool
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
    parser.add_argument("--concurrency", type=int, default=4, help="baseline concurrent workers (default 4)")
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
        "--no-floor",
        action="store_true",
        help="skip the engine floor (dockworker's container through its adapter, without the service)",
    )
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
        learn=args.learn,
        poll_ms=args.poll_ms,
        batch_poll_ms=args.batch_poll_ms,
        image=args.image,
        floor=not args.no_floor,
        wait_quiet_s=args.wait_quiet,
    )


def rotated(names: Sequence[str], index: int) -> list[str]:
    """The sides in a different order each time, so each goes first equally often."""
    k = index % len(names)
    return [*names[k:], *names[:k]]


def measure_latency(
    options: Options, baseline: Baseline, service: Service, floor: Floor | None, noise: Noise
) -> dict[str, Any]:
    """Single tasks, one at a time, the sides interleaved (who goes first rotates)."""
    base: list[float] = []
    floor_runs: list[dict[str, float]] = []
    samples: list[TaskSample] = []
    sides: dict[str, Callable[[], None]] = {
        "baseline": lambda: base.append(ms(baseline.one())),
        "dockworker": lambda: samples.append(service.one(options.poll_s)),
    }
    if floor is not None:
        sides["floor"] = lambda: floor_runs.append(floor.one())
    total = options.warmup + options.n
    for i in range(total):
        for side in rotated(list(sides), i):
            sides[side]()
        noise.sample()
        if (i + 1) % 10 == 0 or i + 1 == total:
            log(f"  latency: {i + 1}/{total} (first {options.warmup} are warm-up)")
    kept = samples[options.warmup :]
    kept_floor = floor_runs[options.warmup :]
    split_keys = sorted({k for s in kept for k in s.split_ms})
    return {
        "baseline_ms": asdict(Summary.of(base[options.warmup :])),
        "dockworker_ms": asdict(Summary.of([s.latency_ms for s in kept if s.status == "complete"])),
        "dockworker_failed": [asdict(s) for s in kept if s.status != "complete"],
        "dockworker_infra_retried": [s.task_id for s in kept if "infra_retry" in s.events],
        "dockworker_split_ms": {
            k: asdict(Summary.of([s.split_ms[k] for s in kept if k in s.split_ms])) for k in split_keys
        },
        "dockworker_polls_per_task": statistics.fmean(s.polls for s in kept) if kept else 0,
        "dockworker_poll_rtt_ms": statistics.median(s.poll_rtt_ms for s in kept) if kept else 0,
        "floor_phases_ms": {k: asdict(Summary.of([r[k] for r in kept_floor])) for k in floor_runs[0]}
        if floor_runs
        else {},
        "raw": {
            "baseline_ms": base,
            "dockworker": [asdict(s) for s in samples],
            "floor_ms": floor_runs,
            "warmup_discarded": options.warmup,
        },
    }


def measure_throughput(
    options: Options, baseline: Baseline, service: Service, floor: Floor | None, noise: Noise
) -> dict[str, Any]:
    """One batch per side per round; the order alternates between rounds. A small batch per
    side first, as warm-up (discarded)."""
    meter_base, meter_floor = CpuMeter(), CpuMeter()
    meter_dw = CpuMeter(service_pid=service.pid)
    batch_poll = options.batch_poll_ms / 1000 if options.learn == "poll" else None
    sides: dict[str, Callable[[int], dict[str, Any]]] = {
        "baseline": lambda n: baseline.throughput(n, options.concurrency, meter_base),
        "dockworker": lambda n: service.throughput(n, batch_poll, meter_dw),
    }
    if floor is not None:
        sides["floor"] = lambda n: floor.throughput(n, options.slots, meter_floor)
    for run in sides.values():
        run(max(options.warmup, 1))
    runs: dict[str, list[dict[str, Any]]] = {side: [] for side in sides}
    for round_index in range(options.rounds):
        for side in rotated(list(sides), round_index):
            log(f"  throughput round {round_index + 1}/{options.rounds}: {side}")
            noise.sample()
            runs[side].append(sides[side](options.batch))
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


SPLIT_KEYS = (
    "post_to_queued",
    "queued_to_claimed",
    "claimed_to_container_created",
    "container_created_to_started",
    "started_to_finished",
    "finished_to_seen",
    "queue_wait",
    "run",
    "post_to_finished",
)


def comparison(names: tuple[str, str], lat: tuple[dict[str, Any], dict[str, Any]], thr: Any) -> list[str]:
    """Rows of one side against another (latency summaries, throughput results)."""
    (a, b), (ta, tb) = lat, thr
    rows = [(f"latency {k} (ms)", a[k], b[k]) for k in ("p50", "p90", "min", "max")]
    rows += [
        ("throughput (tasks/s)", ta["tasks_per_s"], tb["tasks_per_s"]),
        ("host CPU per task (ms)", ta["host_cpu_ms_per_task"], tb["host_cpu_ms_per_task"]),
    ]
    head = f"dw / {names[0][:5]}"
    lines = [f"{'':24}{names[0]:>12}{names[1]:>12}{head:>12}"]
    lines += [f"{name:24}{fmt(x):>12}{fmt(y):>12}{ratio(y, x):>12}" for name, x, y in rows]
    return lines


def render_header(result: dict[str, Any]) -> list[str]:
    host, options = result["host"], result["options"]
    return [
        f"host: {host['cores']} cores ({host['cpu_model']}), kernel {host['kernel']}, "
        f"Python {host['python']}",
        f"docker: engine {host['docker_server']} (API {host['docker_api']}), CLI {host['docker_client']}; "
        f"dockworker {result['dockworker_version']}",
        f"run: n={options['n']} single tasks per side (+{options['warmup']} warm-up discarded, interleaved), "
        f"batch={options['batch']} x {options['rounds']} round(s), slots={options['slots']}, "
        f"baseline concurrency={options['concurrency']}, "
        + ("?wait" if options["learn"] == "wait" else f"poll {fmt(options['poll_ms'], 0)} ms"),
        f"baseline: {' '.join(result['baseline_command'])}",
        "",
    ]


def render_details(result: dict[str, Any]) -> list[str]:
    lat, thr = result["latency"], result["throughput"]
    lines = ["", "dockworker single task, where the time goes (server timestamps, ms, p50 / p90):"]
    split = lat["dockworker_split_ms"]
    lines += [f"  {k:32}{fmt(split[k]['p50']):>8}{fmt(split[k]['p90']):>8}" for k in SPLIT_KEYS if k in split]
    lines.append(
        f"  polls per task {fmt(lat['dockworker_polls_per_task'])}, poll round trip p50 "
        f"{fmt(lat['dockworker_poll_rtt_ms'], 2)} ms"
    )
    if lat["floor_phases_ms"]:
        phases = ", ".join(f"{k} {fmt(v['p50'])}" for k, v in lat["floor_phases_ms"].items())
        lines.append(f"engine floor phases (ms, p50): {phases}")
    lines.append("")
    for side, results in thr.items():
        for index, run in enumerate(results["rounds"], 1):
            line = (
                f"throughput {side:10} round {index}: {run['tasks']} tasks in {fmt(run['wall_s'], 2)} s = "
                f"{fmt(run['tasks_per_s'], 2)}/s, host CPU {fmt(run['host_cpu_ms_per_task'], 0)} ms/task"
            )
            if side == "dockworker":
                line += (
                    f" (service process {fmt(run['service_cpu_ms_per_task'], 0)}, "
                    f"bench {fmt(run['bench_self_cpu_ms_per_task'], 0)}); client saw it at "
                    f"{fmt(run['client_seen_s'], 2)} s; slots busy: "
                    f"mean {fmt(run['mean_slots_busy'], 1)} max {run['max_slots_busy']}, {run['statuses']}"
                )
            lines.append(line)
    return lines


def render_warnings(result: dict[str, Any]) -> list[str]:
    lat, host, noise = result["latency"], result["host"], result["noise"]
    lines = []
    if lat["dockworker_failed"]:
        lines.append(f"WARNING: {len(lat['dockworker_failed'])} dockworker single task(s) did not complete")
    for run in result["throughput"]["dockworker"]["rounds"]:
        for problem in run["not_complete"]:
            lines.append(
                f"WARNING: batch task {problem['id']} ended {problem['status']}: {problem['msg']} "
                f"(exit code {problem['exit_code']})"
            )
    if lat["dockworker_infra_retried"]:
        lines.append(
            f"WARNING: {len(lat['dockworker_infra_retried'])} dockworker single task(s) were retried after "
            "an infrastructure error (their container vanished?); their latency includes the retry"
        )
    lines.append(
        f"other load: CPUs {host['background_busy_start']:.0%} busy before the run, "
        f"{host['background_busy_end']:.0%} after (2 s idle each); load average start "
        f"{host['loadavg_start'][0]:.2f}, end {host['loadavg_end'][0]:.2f}"
    )
    lines.append(
        f"other containers on the engine in {noise['samples_with_foreign']} of {noise['samples']} samples "
        f"(max {noise['max_foreign']})"
        + ("  <- shared engine: figures are noisy" if noise["samples_with_foreign"] else "")
    )
    return lines


def render(result: dict[str, Any]) -> str:
    lat, thr = result["latency"], result["throughput"]
    lines = render_header(result)
    lines += comparison(
        ("baseline", "dockworker"),
        (lat["baseline_ms"], lat["dockworker_ms"]),
        (thr["baseline"], thr["dockworker"]),
    )
    lines.append("latency ratio > 1: dockworker is slower; throughput ratio > 1: dockworker is faster.")
    if "floor" in thr:
        floor_ms = lat["floor_phases_ms"]["total"]
        lines += [
            "",
            f"engine floor: the runner's container through dockworker's adapter, no service "
            f"({result['options']['slots']} concurrent for throughput):",
        ]
        lines += comparison(
            ("floor", "dockworker"), (floor_ms, lat["dockworker_ms"]), (thr["floor"], thr["dockworker"])
        )
        added = lat["dockworker_ms"]["p50"] - floor_ms["p50"]
        lines.append(f"what the service adds to a single task (p50 - p50): {fmt(added)} ms")
    lines += render_details(result)
    lines += render_warnings(result)
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


def check_clean(run_label: str, runner_id: str) -> dict[str, Any]:
    remove_containers(containers(run_label))  # baseline leftovers, if a run was interrupted
    return {
        "dockworker_task_containers": containers(TASK_LABEL),
        "ours_left": containers(f"{RUNNER_LABEL}={runner_id}") + containers(run_label),
    }


def _exit_on_sigterm(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds through the clean-up like Ctrl-C does


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_options(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    if not run_text(["docker", "image", "inspect", "--format", "{{.Id}}", options.image]):
        log(f"image {options.image} not found: build it with 'dockworker stacks build busybox'")
        return 2
    run_id = f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"
    run_label = f"{BENCH_LABEL}={run_id}"
    runner_id = f"bench-{run_id}"
    noise = Noise(run_label, runner_id)
    if options.wait_quiet_s > 0 and (noise.foreign() or background_busy(1.0) >= 0.25):
        log(f"the host or engine is busy: waiting up to {options.wait_quiet_s:.0f} s for a quiet host")
        if not noise.wait_quiet(options.wait_quiet_s):
            log("still busy: measuring anyway (the figures will be noisy)")
    host = host_info()
    host["background_busy_start"] = background_busy(2.0)
    baseline = Baseline(options.image, run_label)
    result: dict[str, Any] = {"run_id": run_id, "options": asdict(options), "host": host}
    result["baseline_command"] = baseline.command
    floor_dir = Path(tempfile.mkdtemp(prefix="dockworker-bench-floor-"))
    floor = Floor(options.image, run_label, floor_dir) if options.floor else None
    try:
        with running_service(options, runner_id) as service:
            service.upload_noop()
            result["dockworker_version"] = service.version
            log(
                f"dockworker {service.version}: port {service.port}, pid {service.pid}, slots {options.slots}"
            )
            noise.sample()
            result["latency"] = measure_latency(options, baseline, service, floor, noise)
            result["throughput"] = measure_throughput(options, baseline, service, floor, noise)
            noise.sample()
    finally:
        if floor is not None:
            floor.close()
        shutil.rmtree(floor_dir, ignore_errors=True)
        clean = check_clean(run_label, runner_id)
        log(f"containers left by this run: {len(clean['ours_left'])}")
    host["loadavg_end"] = os.getloadavg()
    host["background_busy_end"] = background_busy(2.0)
    result["noise"] = noise.summary()
    result["cleanup"] = clean
    print(render(result))
    left = clean["dockworker_task_containers"]
    print(
        f"\nclean-up: service stopped with SIGTERM, temp dir removed; "
        f"docker ps -a --filter label={TASK_LABEL}: " + ("empty" if not left else " ".join(left))
    )
    if left:
        print(f"  of these, left by this run: {len(clean['ours_left'])} (the others belong to other runners)")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"e2e_latency-{run_id}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"figures written to {out}")
    return 1 if clean["ours_left"] else 0


if __name__ == "__main__":
    sys.exit(main())
