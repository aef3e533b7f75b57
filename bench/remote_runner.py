"""A remote runner next to a runner attached to the store, measured in one run.

Both run at once for the whole run, as processes of their own, with the same ``--slots``:

* the store's runner: ``dockworker runner --store URL --cluster bench-store``;
* the remote runner: ``dockworker runner --api http://127.0.0.1:PORT --cluster-id ID
  --cluster-token TOKEN`` (over loopback: this measures the protocol, not a network);

on one throwaway PostgreSQL database (dropped at the end, also on Ctrl-C), one API server
(``dockworker server``), the same Docker engine and the same no-op task (stack busybox, command
``true``). Each side has its own cluster, so a task is run by the side it was queued for. Tasks
are queued through the API for both.

* **Claim latency**: queued -> claimed, from the task's own events, for single tasks queued one
  at a time to an idle runner (the wake-up path: LISTEN/NOTIFY for the store's runner; for the
  remote one, the API server's wake-up of its long poll, then the HTTP answer). The sides are
  interleaved, the first one alternating. Also shown: claimed -> container started (the
  remote runner fetches the task's code and reports over HTTP), and queued -> complete.
* **Tasks/s**: ``--batch`` tasks queued at once to one side, from the first one's creation to
  the last one's end (``end_time``), for ``--rounds`` rounds alternating the sides: the median.

A benchmark, not a test: it asserts nothing. Run: ``. .venv/bin/activate && python
bench/remote_runner.py`` (``--quick`` for a smoke run; ``--help``). Figures go to stdout and,
as JSON, to ``bench/results/``."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import io
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import sqlalchemy as sa
from psycopg import sql

from dockworker.models import CodeSpec
from dockworker.store.postgres import PostgresStore

RESULTS_DIR = Path(__file__).resolve().parent / "results"
SERVER_URL = os.environ.get("DOCKWORKER_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
HOST = "127.0.0.1"
STORE_CLUSTER = "bench-store"
SIDES = ("store", "remote")
TERMINAL = ("complete", "error", "cancelled", "killed", "timeout")
READY_S = 60.0
TASK_S = 120.0


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--server", default=SERVER_URL, help="PostgreSQL server (a database to connect to)")
    parser.add_argument("--slots", type=int, default=4, help="slots of each runner")
    parser.add_argument("--singles", type=int, default=40, help="single tasks per side (latency)")
    parser.add_argument("--warmup", type=int, default=3, help="single tasks per side left out first")
    parser.add_argument("--batch", type=int, default=120, help="tasks per throughput batch")
    parser.add_argument("--rounds", type=int, default=3, help="throughput batches per side")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 6 singles, 1 round of 20")
    args = parser.parse_args(argv)
    if args.quick:
        args.singles, args.warmup, args.batch, args.rounds = 6, 1, 20, 1
    return args


def dockworker() -> list[str]:
    script = shutil.which("dockworker", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-c", "from dockworker.cli.main import main; main()"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


# --- the rig ------------------------------------------------------------------------------------


class Rig:
    def __init__(self, server_url: str, root: Path, slots: int) -> None:
        self.server_url = server_url
        self.root = root
        self.slots = slots
        self.db_name = f"dw_bench_remote_{os.getpid()}"
        self.admin = psycopg.connect(server_url, autocommit=True, connect_timeout=5)
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.port = free_port()
        self.url = ""
        self.db: psycopg.Connection[tuple[Any, ...]] | None = None
        self.project_id = self.token = self.cluster_id = self.cluster_token = self.installation_id = ""

    def open(self) -> None:
        self.admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.db_name)))
        self.url = sa.engine.make_url(self.server_url).set(database=self.db_name).render_as_string(False)
        store = PostgresStore(self.url)
        try:
            store.migrate()
            self.project_id = store.create_project("bench").id
            self.token = store.create_token(self.project_id, "bench")[0]
            self.cluster_token, cluster = store.create_cluster(self.project_id, "bench-remote", 512)
            self.cluster_id = cluster.id
            self.installation_id = store.installation_id()
            archive = _zip({"README": "a no-op task\n"})
            spec = CodeSpec(name="noop", stack="busybox", command="true")
            store.save_code(self.project_id, spec, archive, hashlib.sha256(archive).hexdigest())
        finally:
            store.close()
        self.db = psycopg.connect(self.url, autocommit=True)

    def start(self) -> None:
        self._start("server", ["server", "--store", self.url, "--host", HOST, "--port", str(self.port)])
        self._wait(lambda: _get(self.port, "/version") is not None, "server")
        store_argv = ["runner", "--store", self.url, "--cluster", STORE_CLUSTER, "--runner-id", "bench-store"]
        self._start("store", [*store_argv, "--slots", str(self.slots)])
        remote_argv = ["runner", "--api", f"http://{HOST}:{self.port}", "--cluster-id", self.cluster_id]
        remote_argv += ["--cluster-token", self.cluster_token, "--runner-id", "bench-remote"]
        self._start("remote", [*remote_argv, "--slots", str(self.slots)])
        self._wait(lambda: "runner started" in self.output("store"), "store")
        self._wait(lambda: "runner of cluster" in self.output("remote"), "remote")

    def _start(self, name: str, args: list[str]) -> None:
        data_dir = self.root / name
        data_dir.mkdir()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCKWORKER_", "IRON_"))}
        with (self.root / f"{name}.log").open("wb") as log:
            self.processes[name] = subprocess.Popen(
                [*dockworker(), *args, "--data-dir", str(data_dir)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )

    def output(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")

    def _wait(self, ready: Callable[[], bool], name: str) -> None:
        deadline = time.monotonic() + READY_S
        while not ready():
            process = self.processes[name]
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{name} did not start:\n{self.output(name)[-3000:]}")
            time.sleep(0.05)

    def close(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        if self.db is not None:
            self.db.close()
        self.admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(self.db_name))
        )
        self.admin.close()

    # --- work -----------------------------------------------------------------------------------

    def queue(self, side: str, count: int) -> list[str]:
        cluster = STORE_CLUSTER if side == "store" else self.cluster_id
        body = {"tasks": [{"code_name": "noop", "cluster": cluster} for _ in range(count)]}
        answer = _post(self.port, f"/2/projects/{self.project_id}/tasks", self.token, body)
        return [task["id"] for task in answer["tasks"]]

    def wait_done(self, ids: list[str]) -> None:
        assert self.db is not None
        deadline = time.monotonic() + TASK_S + len(ids)
        while True:
            done = self.db.execute(
                "SELECT count(*) FROM tasks WHERE id = ANY(%s) AND status = ANY(%s)", (ids, list(TERMINAL))
            ).fetchone()
            if done is not None and done[0] == len(ids):
                return
            if time.monotonic() > deadline:
                raise SystemExit(f"tasks not done after {TASK_S + len(ids):.0f} s")
            time.sleep(0.01)

    def timings(self, ids: list[str]) -> list[dict[str, Any]]:
        """Per task: status, created, claimed (event), started, ended (epoch seconds)."""
        assert self.db is not None
        rows = self.db.execute(
            "SELECT t.id, t.status, t.created_at, t.start_time, t.end_time,"
            " (SELECT min(e.at) FROM task_events e WHERE e.task_id = t.id AND e.kind = 'claimed'),"
            " (SELECT min(e.at) FROM task_events e WHERE e.task_id = t.id AND e.kind = 'queued')"
            " FROM tasks t WHERE t.id = ANY(%s)",
            (ids,),
        ).fetchall()
        return [
            {
                "id": r[0],
                "status": r[1],
                "created": r[2],
                "started": r[3],
                "ended": r[4],
                "claimed": r[5],
                "queued": r[6],
            }
            for r in rows
        ]


def _zip(files: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def _request(
    port: int, method: str, path: str, token: str | None = None, body: Any = None
) -> tuple[int, Any]:
    conn = http.client.HTTPConnection(HOST, port, timeout=30)
    try:
        headers = {"Authorization": f"OAuth {token}"} if token else {}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        conn.request(method, path, body=data, headers=headers)
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        conn.close()


def _get(port: int, path: str) -> Any:
    with contextlib.suppress(OSError, ValueError, http.client.HTTPException):
        status, answer = _request(port, "GET", path)
        if status == 200:
            return answer
    return None


def _post(port: int, path: str, token: str, body: Any) -> Any:
    status, answer = _request(port, "POST", path, token, body)
    if status != 200:
        raise SystemExit(f"POST {path}: HTTP {status}: {answer}")
    return answer


# --- the measurements ---------------------------------------------------------------------------


def measure_singles(rig: Rig, count: int, warmup: int) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
    for number in range(warmup + count):
        order = SIDES if number % 2 == 0 else SIDES[::-1]
        for side in order:
            ids = rig.queue(side, 1)
            rig.wait_done(ids)
            if number >= warmup:
                found[side].extend(rig.timings(ids))
    return found


def measure_batches(rig: Rig, batch: int, rounds: int) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
    rig.wait_done(rig.queue("store", 4) + rig.queue("remote", 4))  # warm
    for number in range(rounds):
        for side in SIDES if number % 2 == 0 else SIDES[::-1]:
            ids = rig.queue(side, batch)
            rig.wait_done(ids)
            tasks = rig.timings(ids)
            span = max(t["ended"] for t in tasks) - min(t["created"] for t in tasks)
            statuses = sorted({t["status"] for t in tasks})
            found[side].append(
                {"tasks": batch, "seconds": span, "tasks_per_s": batch / span, "statuses": statuses}
            )
    return found


def summarise(
    singles: dict[str, list[dict[str, Any]]], batches: dict[str, list[dict[str, Any]]]
) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for side in SIDES:
        tasks = singles[side]
        ms = {
            "queued_to_claimed": [1000 * (t["claimed"] - t["queued"]) for t in tasks],
            "claimed_to_started": [1000 * (t["started"] - t["claimed"]) for t in tasks],
            "queued_to_complete": [1000 * (t["ended"] - t["queued"]) for t in tasks],
        }
        summary[side] = {
            **{f"{name}_p50_ms": quantile(v, 0.5) for name, v in ms.items()},
            **{f"{name}_p90_ms": quantile(v, 0.9) for name, v in ms.items()},
            "tasks_per_s": statistics.median(b["tasks_per_s"] for b in batches[side]),
            "batches": batches[side],
            "statuses": sorted({t["status"] for t in tasks}),
        }
    return summary


def render(summary: dict[str, Any], args: argparse.Namespace) -> str:
    store, remote = summary["store"], summary["remote"]
    rows = [
        ("claim latency p50 (queued -> claimed), ms", "queued_to_claimed_p50_ms"),
        ("claim latency p90, ms", "queued_to_claimed_p90_ms"),
        ("claimed -> container started p50, ms", "claimed_to_started_p50_ms"),
        ("queued -> complete p50, ms", "queued_to_complete_p50_ms"),
        ("queued -> complete p90, ms", "queued_to_complete_p90_ms"),
        (f"tasks/s ({args.batch}-task batches, median of {args.rounds})", "tasks_per_s"),
    ]
    lines = [
        f"{args.singles} single tasks per side, {args.slots} slots each, no-op busybox task",
        f"{'':<52} {'store':>10} {'remote':>10} {'remote/store':>13}",
    ]
    for label, key in rows:
        ratio = remote[key] / store[key] if store[key] else float("nan")
        lines.append(f"{label:<52} {store[key]:>10.1f} {remote[key]:>10.1f} {ratio:>12.2f}x")
    for side in SIDES:
        per_batch = ", ".join(f"{b['tasks_per_s']:.1f}" for b in summary[side]["batches"])
        statuses = sorted(
            {s for b in summary[side]["batches"] for s in b["statuses"]} | set(summary[side]["statuses"])
        )
        lines.append(f"{side}: tasks/s per batch {per_batch}; statuses seen {statuses}")
    return "\n".join(lines)


def containers_left(installation_id: str) -> list[str]:
    result = subprocess.run(
        ["docker", "ps", "-a", "-q", "--filter", f"label=dockworker.installation={installation_id}"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return result.stdout.split()


@contextlib.contextmanager
def rig_running(args: argparse.Namespace) -> Iterator[Rig]:
    root = Path(tempfile.mkdtemp(prefix="dw-bench-remote-"))
    rig = Rig(args.server, root, args.slots)
    previous = signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        rig.open()
        rig.start()
        yield rig
    finally:
        signal.signal(signal.SIGTERM, previous)
        for name in rig.processes:
            shutil.copy(root / f"{name}.log", RESULTS_DIR / f"last-remote-bench-{name}.log")
        rig.close()
        left = containers_left(rig.installation_id) if rig.installation_id else []
        if left:
            subprocess.run(["docker", "rm", "-f", *left], capture_output=True, timeout=60, check=False)
        print(f"containers of this run left on the engine: {len(left)}")
        shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    RESULTS_DIR.mkdir(exist_ok=True)
    started = time.monotonic()
    with rig_running(args) as rig:
        singles = measure_singles(rig, args.singles, args.warmup)
        batches = measure_batches(rig, args.batch, args.rounds)
    summary = summarise(singles, batches)
    print(render(summary, args))
    run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS_DIR / f"remote_runner-{run_id}.json"
    path.write_text(json.dumps({"args": vars(args), "summary": summary, "singles": singles}, indent=1))
    print(f"took {time.monotonic() - started:.0f} s; JSON in {path}")


if __name__ == "__main__":
    main(sys.argv[1:])
