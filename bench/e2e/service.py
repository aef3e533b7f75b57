"""The dockworker side: the real service in a child process, and its API as a client sees it."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx2

from e2e.common import (
    CODE_NAME,
    STACK,
    TASK_TIMEOUT_S,
    TERMINAL,
    WAIT_S,
    CpuMeter,
    Summary,
    free_port,
    log,
    ms,
    parse_time,
    process_cpu_s,
)

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
