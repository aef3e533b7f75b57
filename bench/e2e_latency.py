"""End-to-end cost of a no-op task: dockworker against the container it runs, on both backends,
next to a naive ``docker run`` loop. Issue 13's five sides, in one run.

A benchmark, not a test. In one invocation, on the same host, engine and image, it measures:

* baseline: ``docker run --rm --network none IMAGE true`` through the docker CLI, one at a time
  (latency) and from C concurrent workers (throughput);
* floor (Docker): the runner's own container (``runner/contract.py``'s ``container_spec`` for a
  no-op busybox package) through dockworker's Docker adapter: create, attach, start, output to
  its end, wait, remove. No store, no API, no polling;
* dockworker (Docker): the real service (``dockworker up`` as a subprocess, on a temporary data
  dir, SQLite), a no-op code package (stack busybox, command ``true``): single tasks queued one
  at a time (latency), then batches of M tasks (throughput). The client learns that a task ended
  with ``GET /tasks/{id}?wait=`` (``--learn poll`` polls instead);
* floor (OCI) and dockworker (OCI): the same two with ``--runtime oci`` (crun), when this host
  can run them (root, crun);
* with ``--pg URL``: pick-up on PostgreSQL, a dockworker (Docker) service on a throwaway
  database of that server, single tasks.

dockworker's figures against its backend's floor are what the service adds. The single-task
runs of the sides are interleaved (who goes first rotates); so are the throughput rounds. The
first ``--warmup`` runs of each side are discarded. Pick-up is queued -> claimed, from the task's
own timestamp and claim event. The figures and the ratios against issue 13's targets are printed,
and written as JSON to ``bench/results/``. See ``bench/README.md``.

Run: ``. .venv/bin/activate && python bench/e2e_latency.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
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
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import httpx2

from dockworker.engine import ContainerSpec, DockerEngine, Engine
from dockworker.models import CodeSpec
from dockworker.runner.contract import TaskFiles, container_spec, ensure_hosts_file, write_task_files
from dockworker.settings import load_settings

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
# Issue 13's targets, each a ratio within one run (or a bound).
P50_TARGET = 1.08  # dockworker p50 <= 1.08 x its floor's
THROUGHPUT_TARGET = 0.95  # dockworker tasks/s >= 0.95 x its floor's
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


# --- the floors: the runner's container through dockworker's adapter, no service -------------


def runner_container(work: Path, label: str, runner_id: str) -> ContainerSpec:
    """The container the runner makes for the no-op package (its own ``container_spec``), with
    this run's labels (the clean-up finds it by them)."""
    settings = load_settings(env={}, data_dir=work / "data")
    task_dir, code_dir = work / "task", work / "code"
    code_dir.mkdir(parents=True)
    (code_dir / "noop.sh").write_text("true\n")
    write_task_files(task_dir, "", None, 1000, 1000)
    files = TaskFiles(task_dir=task_dir, code_dir=code_dir, hosts_file=ensure_hosts_file(settings.data_dir))
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


# --- dockworker: the service and its API ------------------------------------------------------


@dataclass
class TaskSample:
    """One single task, timed from the client, split with the server's own timestamps."""

    task_id: str
    status: str
    latency_ms: float
    polls: int
    poll_rtt_ms: float
    service_cpu_ms: float = 0.0
    split_ms: dict[str, float] = field(default_factory=dict)
    events: list[str] = field(default_factory=list)


class Service:
    """``dockworker up`` in a subprocess on a temporary data dir, and an API client for it."""

    def __init__(self, slots: int, runner_id: str, *, runtime: str = "docker", store_url: str = "") -> None:
        self.slots = slots
        self.runner_id = runner_id
        self.runtime = runtime
        self.store_url = store_url
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
        command += ["--slots", str(self.slots), "--runtime", self.runtime]
        env = {**os.environ, "DOCKWORKER_RUNNER_ID": self.runner_id}
        if self.store_url:
            env["DOCKWORKER_STORE_URL"] = self.store_url
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
            timeout=WAIT_S + 30,
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
        assert self.http is not None and self.pid is not None
        cpu0 = process_cpu_s(self.pid)
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
        sample.service_cpu_ms = ms(process_cpu_s(self.pid) - cpu0)
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
        unfinished = {"code_name": CODE_NAME, "queued": 1, "preparing": 1, "running": 1, "per_page": 100}
        requests = 0
        if poll_s is None:
            # Wait for the batch's last task (claims go first in, first out: it ends about last),
            # then look for any still unfinished, and wait for the last of those, and so on.
            left = list(ids)
            while left:
                self.call("GET", f"/tasks/{left[-1]}", params={"wait": WAIT_S})
                still = {t["id"] for t in self.call("GET", "/tasks", params=unfinished)["tasks"]}
                left = [task_id for task_id in left if task_id in still]
                requests += 2
                if time.perf_counter() - started > TASK_TIMEOUT_S + tasks:
                    raise RuntimeError("batch not done in time")
        else:
            while self.call("GET", "/tasks", params=unfinished)["tasks"]:
                requests += 1
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
            "client_requests": requests + 1,
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


def remove_containers(ids: Sequence[str]) -> None:
    if ids:
        subprocess.run(["docker", "rm", "-f", *ids], capture_output=True, check=False)


@dataclass
class Noise:
    """Counts containers on the engine that are not this run's: other work on a shared engine
    competes for the 2 cores. Sampled between measurements, never inside one."""

    labels: Sequence[str]
    samples: list[int] = field(default_factory=list)

    def foreign(self) -> int:
        everything = set(run_text(["docker", "ps", "-a", "-q"]).split())
        ours = {c for label in self.labels for c in containers(label)}
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


def fmt(value: float | None, digits: int = 1) -> str:
    if value is None or value != value:  # None or NaN
        return "-"
    return f"{value:.{digits}f}"


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def verdict(ok: bool | None) -> str:
    return "-" if ok is None else "met" if ok else "NOT met"


SPLIT_KEYS = (
    "post_to_queued",
    "queued_to_claimed",
    "claimed_to_container_created",
    "container_created_to_started",
    "started_to_finished",
    "finished_to_seen",
    "post_to_finished",
)


def render_header(result: dict[str, Any]) -> list[str]:
    host, options = result["host"], result["options"]
    learn = "GET ?wait" if options["learn"] == "wait" else f"polling every {fmt(options['poll_ms'], 0)} ms"
    return [
        f"host: {host['cores']} cores ({host['cpu_model']}), kernel {host['kernel']}, "
        f"Python {host['python']}",
        f"docker: engine {host['docker_server']} (API {host['docker_api']}), CLI {host['docker_client']}; "
        f"dockworker {result.get('dockworker_version', '?')}",
        f"run: n={options['n']} single tasks per side (+{options['warmup']} warm-up discarded, interleaved), "
        f"batch={options['batch']} x {options['rounds']} round(s), slots={options['slots']} (floors: "
        f"{options['slots']} threads), baseline concurrency={options['concurrency']}; client learns ends "
        f"by {learn}",
        f"baseline: {' '.join(result['baseline_command'])}",
        f"load average at the start {host['loadavg_start'][0]:.2f}, at the end {host['loadavg_end'][0]:.2f}",
        "",
    ]


def render_sides(result: dict[str, Any]) -> list[str]:
    lat, thr = result["latency"], result["throughput"]
    lines = [
        f"{'side':16}{'p50 ms':>9}{'p90':>8}{'min':>8}{'max':>8}{'tasks/s':>9}{'host CPU':>10}"
        f"{'svc CPU':>9}{'svc CPU 1':>11}{'pick-up':>9}",
        f"{'':49}{'':>9}{'ms/task':>10}{'ms/task':>9}{'ms/task':>11}{'p50 ms':>9}",
    ]
    for name in lat:
        total, run = lat[name]["total_ms"], thr.get(name, {})
        split = lat[name].get("split_ms", {}).get("queued_to_claimed", {})
        lines.append(
            f"{name:16}{fmt(total['p50']):>9}{fmt(total['p90']):>8}{fmt(total['min']):>8}{fmt(total['max']):>8}"
            f"{fmt(run.get('tasks_per_s'), 2):>9}{fmt(run.get('host_cpu_ms_per_task'), 0):>10}"
            f"{fmt(run.get('service_cpu_ms_per_task')):>9}{fmt(lat[name].get('service_cpu_ms_per_task')):>11}"
            f"{fmt(split.get('p50')):>9}"
        )
    lines.append(
        "svc CPU: the dockworker process's CPU per task in the throughput batches; svc CPU 1: per "
        "single task (its POST and its ?wait included)"
    )
    return lines


def target_rows(result: dict[str, Any]) -> list[tuple[str, str, float | None, bool | None]]:
    """(backend, what, figure, met) for each of issue 13's targets."""
    lat, thr = result["latency"], result["throughput"]
    rows: list[tuple[str, str, float | None, bool | None]] = []
    for prefix, backend in (("", "docker"), ("oci-", "oci")):
        service, floor = f"{prefix}dockworker", f"{prefix}floor"
        if service not in lat:
            continue
        if floor in lat:
            p50 = ratio(lat[service]["total_ms"]["p50"], lat[floor]["total_ms"]["p50"])
            rows.append(
                (
                    backend,
                    f"p50 / floor p50 (<= {P50_TARGET})",
                    p50,
                    None if p50 is None else p50 <= P50_TARGET,
                )
            )
            tput = ratio(thr.get(service, {}).get("tasks_per_s"), thr.get(floor, {}).get("tasks_per_s"))
            rows.append(
                (
                    backend,
                    f"tasks/s / floor tasks/s (>= {THROUGHPUT_TARGET})",
                    tput,
                    None if tput is None else tput >= THROUGHPUT_TARGET,
                )
            )
        cpu = thr.get(service, {}).get("service_cpu_ms_per_task")
        rows.append(
            (
                backend,
                f"service CPU ms/task (<= {SERVICE_CPU_TARGET_MS:.0f})",
                cpu,
                None if cpu is None else cpu <= SERVICE_CPU_TARGET_MS,
            )
        )
        pickup = lat[service]["split_ms"].get("queued_to_claimed", {}).get("p50")
        rows.append(
            (
                f"{backend}/SQLite",
                f"pick-up p50 ms (<= {PICKUP_TARGET_MS:.0f})",
                pickup,
                None if pickup is None else pickup <= PICKUP_TARGET_MS,
            )
        )
    pg = result.get("postgresql")
    if pg:
        pickup = pg["split_ms"].get("queued_to_claimed", {}).get("p50")
        rows.append(
            (
                "docker/PostgreSQL",
                f"pick-up p50 ms (<= {PICKUP_TARGET_MS:.0f})",
                pickup,
                None if pickup is None else pickup <= PICKUP_TARGET_MS,
            )
        )
    return rows


def render_targets(result: dict[str, Any]) -> list[str]:
    lines = ["", "issue 13's targets (ratios within this run):"]
    for backend, what, figure, met in target_rows(result):
        lines.append(f"  {backend:18}{what:44}{fmt(figure, 2):>8}  {verdict(met)}")
    lat = result["latency"]
    if "baseline" in lat and "dockworker" in lat:
        base = ratio(lat["dockworker"]["total_ms"]["p50"], lat["baseline"]["total_ms"]["p50"])
        lines.append(f"  (dockworker p50 / naive docker run p50: {fmt(base, 2)})")
    for prefix in ("", "oci-"):
        service, floor = f"{prefix}dockworker", f"{prefix}floor"
        if service in lat and floor in lat:
            added = lat[service]["total_ms"]["p50"] - lat[floor]["total_ms"]["p50"]
            backend = "OCI" if prefix else "Docker"
            lines.append(
                f"  what the service adds to a single task on {backend} (p50 - floor p50): {fmt(added)} ms"
            )
    return lines


def render_details(result: dict[str, Any]) -> list[str]:
    lat, thr = result["latency"], result["throughput"]
    lines = [""]
    for name, figures in lat.items():
        if "split_ms" in figures:
            lines.append(f"{name} single task, where the time goes (server timestamps, ms, p50 / p90):")
            split = figures["split_ms"]
            lines += [
                f"  {k:32}{fmt(split[k]['p50']):>8}{fmt(split[k]['p90']):>8}"
                for k in SPLIT_KEYS
                if k in split
            ]
            lines.append(
                f"  requests per task {fmt(figures['requests_per_task'])}, answer time p50 "
                f"{fmt(figures['request_rtt_ms'], 2)} ms"
            )
        if "phases_ms" in figures:
            phases = ", ".join(f"{k} {fmt(v['p50'])}" for k, v in figures["phases_ms"].items())
            lines.append(f"{name} phases (ms, p50): {phases}")
    pg = result.get("postgresql")
    if pg:
        lines.append("dockworker (Docker) on PostgreSQL, single tasks (ms, p50 / p90):")
        lines += [
            f"  {k:32}{fmt(pg['split_ms'][k]['p50']):>8}{fmt(pg['split_ms'][k]['p90']):>8}"
            for k in SPLIT_KEYS
            if k in pg["split_ms"]
        ]
        lines.append(f"  total {fmt(pg['total_ms']['p50'])} / {fmt(pg['total_ms']['p90'])}")
    lines.append("")
    for name, results in thr.items():
        for index, run in enumerate(results["rounds"], 1):
            line = (
                f"throughput {name:15} round {index}: {run['tasks']} tasks in {fmt(run['wall_s'], 2)} s = "
                f"{fmt(run['tasks_per_s'], 2)}/s, host CPU {fmt(run['host_cpu_ms_per_task'], 0)} ms/task"
            )
            if "service_cpu_ms_per_task" in run:
                line += (
                    f" (service process {fmt(run['service_cpu_ms_per_task'], 1)}, "
                    f"bench {fmt(run['bench_self_cpu_ms_per_task'], 0)}); client saw it at "
                    f"{fmt(run['client_seen_s'], 2)} s after {run['client_requests']} requests; slots busy: "
                    f"mean {fmt(run['mean_slots_busy'], 1)} max {run['max_slots_busy']}, {run['statuses']}"
                )
            lines.append(line)
    return lines


def render_warnings(result: dict[str, Any]) -> list[str]:
    lat, host, noise = result["latency"], result["host"], result["noise"]
    lines = []
    for name, figures in lat.items():
        if figures.get("failed"):
            lines.append(f"WARNING: {len(figures['failed'])} {name} single task(s) did not complete")
        if figures.get("infra_retried"):
            lines.append(
                f"WARNING: {len(figures['infra_retried'])} {name} single task(s) were retried after an "
                "infrastructure error; their latency includes the retry"
            )
    for name, results in result["throughput"].items():
        for run in results["rounds"]:
            for problem in run.get("not_complete", []):
                lines.append(
                    f"WARNING: {name} batch task {problem['id']} ended {problem['status']}: {problem['msg']}"
                )
    lines.append(
        f"other load: CPUs {host['background_busy_start']:.0%} busy before the run, "
        f"{host['background_busy_end']:.0%} after (2 s idle each)"
    )
    lines.append(
        f"other containers on the engine in {noise['samples_with_foreign']} of {noise['samples']} samples "
        f"(max {noise['max_foreign']})"
        + ("  <- shared engine: figures are noisy" if noise["samples_with_foreign"] else "")
    )
    for note in result.get("notes", []):
        lines.append(f"note: {note}")
    return lines


def render(result: dict[str, Any]) -> str:
    lines = render_header(result)
    lines += render_sides(result)
    lines += render_targets(result)
    lines += render_details(result)
    lines += render_warnings(result)
    return "\n".join(lines)


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


def check_clean(run_label: str, runner_id: str, engines: Sequence[Any]) -> dict[str, Any]:
    remove_containers(containers(run_label))  # leftovers of an interrupted run
    left_oci = [c.id for engine in engines for c in engine.list_labelled(run_label)]
    for engine in engines:
        for container_id in left_oci:
            with contextlib.suppress(Exception):
                engine.remove(container_id)
    return {
        "dockworker_task_containers": containers(TASK_LABEL),
        "ours_left": containers(f"{RUNNER_LABEL}={runner_id}")
        + containers(f"{RUNNER_LABEL}={runner_id}-pg")
        + containers(run_label)
        + left_oci,
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
    notes: list[str] = []
    wanted = list(options.sides)
    why_not = oci_unavailable()
    if why_not and any(side.startswith("oci-") for side in wanted):
        notes.append(f"OCI sides left out: {why_not}")
        wanted = [side for side in wanted if not side.startswith("oci-")]
    noise = Noise([run_label, f"{RUNNER_LABEL}={runner_id}", f"{RUNNER_LABEL}={runner_id}-oci"])
    if options.wait_quiet_s > 0 and (noise.foreign() or background_busy(1.0) >= 0.25):
        log(f"the host or engine is busy: waiting up to {options.wait_quiet_s:.0f} s for a quiet host")
        if not noise.wait_quiet(options.wait_quiet_s):
            log("still busy: measuring anyway (the figures will be noisy)")
            notes.append("the host was not quiet when the run started")
    host = host_info()
    host["background_busy_start"] = background_busy(2.0)
    baseline = Baseline(options.image, run_label)
    result: dict[str, Any] = {"run_id": run_id, "options": asdict(options), "host": host, "notes": notes}
    result["baseline_command"] = baseline.command
    work = Path(tempfile.mkdtemp(prefix="dockworker-bench-floor-"))
    docker_engine = DockerEngine(pool_size=16)
    engines: list[Any] = [docker_engine]
    try:
        with contextlib.ExitStack() as stack:
            spec = runner_container(work / "spec", run_label, f"{runner_id}-floor")
            sides: dict[str, Side] = {}
            poll_s = options.poll_s
            batch_poll_s = options.batch_poll_ms / 1000 if options.learn == "poll" else None
            for name in wanted:
                if name == "baseline":
                    sides[name] = BaselineSide(baseline, options.concurrency)
                elif name == "floor":
                    sides[name] = FloorSide(Floor(name, docker_engine, spec), options.slots)
                elif name == "oci-floor":
                    from dockworker.engine.oci import OciEngine

                    oci = OciEngine(work / "oci", docker_engine, runtime="crun")
                    stack.callback(oci.close)
                    engines.append(oci)
                    sides[name] = FloorSide(Floor(name, oci, spec), options.slots)
                else:
                    runtime = "oci" if name.startswith("oci-") else "docker"
                    service = stack.enter_context(
                        running_service(
                            options, runner_id + ("-oci" if runtime == "oci" else ""), runtime=runtime
                        )
                    )
                    service.upload_noop()
                    result["dockworker_version"] = service.version
                    log(f"dockworker ({runtime}) {service.version}: port {service.port}, pid {service.pid}")
                    sides[name] = ServiceSide(service, poll_s, batch_poll_s)
            noise.sample()
            result["latency"] = measure_latency(options, sides, noise)
            result["throughput"] = measure_throughput(options, sides, noise)
            noise.sample()
        if options.pg_url:
            log("pick-up on PostgreSQL")
            result["postgresql"] = measure_pg_pickup(options, run_id, runner_id)
    finally:
        clean = check_clean(run_label, runner_id, engines)
        docker_engine.close()
        shutil.rmtree(work, ignore_errors=True)
        log(f"containers left by this run: {len(clean['ours_left'])}")
    host["loadavg_end"] = os.getloadavg()
    host["background_busy_end"] = background_busy(2.0)
    result["noise"] = noise.summary()
    result["cleanup"] = clean
    print(render(result))
    left = clean["dockworker_task_containers"]
    print(
        f"\nclean-up: services stopped with SIGTERM, temp dirs removed; "
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
