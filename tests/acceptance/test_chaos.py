"""Chaos: one PostgreSQL database, two API servers, three runner processes and more than a
thousand short tasks (some complete, some fail, some time out, some are cancelled while queued or
running). Meanwhile runners are killed with SIGKILL and restarted, and the Docker engine is
restarted once. At the end every task has exactly one terminal state, none is lost, each task's
containers started (counted from the engine's own event stream) equal its recorded attempts, no
container of the installation is left on the engine, and the queue is empty.

The report (counts per status, per package, the chaos done, executions against attempts) is
printed whatever the outcome. ``DW_CHAOS_SEED`` replays a run's choices (not its timing)."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

from dockworker.store.postgres import PostgresStore
from tests.pgdb import Databases, libpq_url

from .support import LOOPBACK, TERMINAL, Api, clean_env, dockworker_command, free_port, version_answers

pytestmark = [pytest.mark.slow, pytest.mark.docker]

TASKS = 1000
BATCH = 100
BATCH_GAP_S = 2.0
RUNNERS = 3
SLOTS = 2
LEASE_TTL_S = 3
HEARTBEAT_S = 1
KILL_CYCLES = 6
MAX_KILL_CYCLES = 15
ENGINE_RESTART_AFTER_CYCLE = 3
QUEUED_CANCELS_PER_BATCH = 3
RUNNING_CANCELS = 30
# Runner down times alternate around the lease: shorter (the restarted runner finds its own
# leases) and longer (the housekeeper expires them first).
SHORT_DOWN_S = (0.5, 2.0)
LONG_DOWN_S = (4.0, 7.0)
KILL_GAP_S = (4.0, 8.0)

READY_S = 60.0
SETTLE_S = 900.0
# Containers of killed runners and of the engine restart are removed by the runners' reaper,
# which runs at a runner's start and every 30 s.
REAP_S = 75.0
ENGINE_STOP_S = 60.0
ENGINE_START_S = 60.0
RUNNER_STOP_S = 30.0
SERVER_STOP_S = 15.0
THREAD_JOIN_S = 180.0
PROGRESS_EVERY_S = 15.0

ACTIVE = ("queued", "preparing", "running")
DOCKERD_ARGS = "--bridge=none --iptables=false --ip-forward=false --ip-masq=false"
DOCKERD_LOG = Path("/var/log/dockerd.log")
DOCKERD_PIDFILE = Path("/var/run/docker.pid")
INSTALLATION_LABEL = "dockworker.installation"
TASK_LABEL = "dockworker.task"

PACKAGES = {
    "ok": "echo ok\n",
    "fail": 'echo "about to fail"\nexit 3\n',
    "timeout": "echo sleeping\nsleep 10\necho woke\n",
    "medium": 'sleep "$(cat "$PAYLOAD_FILE")"\necho done\n',
}
KIND_WEIGHTS = {"ok": 45, "fail": 15, "timeout": 5, "medium": 35}
EXPECTED = {"ok": "complete", "fail": "error", "timeout": "timeout", "medium": "complete"}


class ChaosFailure(Exception):
    """Something the test itself needs did not work (a process did not start, the engine did
    not come back)."""


def _elapsed(since: float) -> str:
    return f"{time.monotonic() - since:7.1f}s"


def _docker(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )


# --- the Docker engine ------------------------------------------------------------------------


def engine_answers() -> bool:
    try:
        return _docker("info", "--format", "{{.ServerVersion}}", timeout=20).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def dockerd_pid() -> int | None:
    try:
        pid = int(DOCKERD_PIDFILE.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _alive(pid) else None


def start_dockerd() -> None:
    """In the background as scripts/setup.sh does, so that it is no child of this process."""
    dockerd = shutil.which("dockerd") or "/usr/sbin/dockerd"
    subprocess.run(
        ["sh", "-c", f"nohup {dockerd} {DOCKERD_ARGS} >>{DOCKERD_LOG} 2>&1 &"],
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        check=True,
        timeout=10,
    )


def wait_engine(timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not engine_answers():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def stop_dockerd(timeout: float) -> int:
    """SIGTERM to the engine; returns once it has exited (SIGKILL when it does not in time)."""
    pid = dockerd_pid()
    if pid is None:
        raise ChaosFailure(f"no running dockerd (pid file {DOCKERD_PIDFILE})")
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            raise ChaosFailure(f"dockerd {pid} did not exit within {timeout} s of SIGTERM (killed)")
        time.sleep(0.1)
    return pid


def ensure_engine() -> None:
    """Whatever happened: leave a running engine behind."""
    if engine_answers():
        return
    if dockerd_pid() is None:
        start_dockerd()
    if not wait_engine(ENGINE_START_S):
        raise ChaosFailure(f"the Docker engine does not answer; see {DOCKERD_LOG}")


def installation_containers(installation_id: str) -> list[dict[str, Any]]:
    result = _docker(
        "ps",
        "-a",
        "--no-trunc",
        "--filter",
        f"label={INSTALLATION_LABEL}={installation_id}",
        "--format",
        "{{json .}}",
    )
    if result.returncode != 0:
        raise ChaosFailure(f"docker ps failed: {result.stderr}")
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


class StartEvents:
    """The engine's own record of container starts for one installation: ``docker events``,
    started again (from the restart's time) after the engine restarts."""

    def __init__(self, directory: Path, installation_id: str) -> None:
        self.directory = directory
        self.installation_id = installation_id
        self.watchers: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(self, since: float) -> None:
        path = self.directory / f"engine-events-{len(self.watchers)}.jsonl"
        with path.open("wb") as out:
            process = subprocess.Popen(
                [
                    "docker",
                    "events",
                    "--since",
                    f"{since:.6f}",
                    "--format",
                    "{{json .}}",
                    "--filter",
                    "type=container",
                    "--filter",
                    "event=start",
                    "--filter",
                    f"label={INSTALLATION_LABEL}={self.installation_id}",
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.watchers.append((process, path))

    def current_alive(self) -> bool:
        return bool(self.watchers) and self.watchers[-1][0].poll() is None

    def stop(self) -> None:
        for process, _ in self.watchers:
            if process.poll() is None:
                process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)

    def starts(self) -> dict[str, list[dict[str, Any]]]:
        """Container starts per task id, each start once."""
        seen: set[tuple[str, int]] = set()
        found: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for _, path in self.watchers:
            for line in path.read_text(errors="replace").splitlines():
                if not line.startswith("{"):
                    continue
                event = json.loads(line)
                key = (event["id"], int(event.get("timeNano") or 0))
                if key in seen:
                    continue
                seen.add(key)
                attributes = event.get("Actor", {}).get("Attributes", {})
                found[attributes.get(TASK_LABEL, "?")].append(
                    {
                        "container": event["id"][:12],
                        "time": event.get("time"),
                        "runner": attributes.get("dockworker.runner"),
                    }
                )
        return dict(found)


# --- dockworker processes ---------------------------------------------------------------------


def service_env() -> dict[str, str]:
    return clean_env(
        DOCKWORKER_LEASE_TTL_S=str(LEASE_TTL_S),
        DOCKWORKER_HEARTBEAT_INTERVAL_S=str(HEARTBEAT_S),
        DOCKWORKER_SHUTDOWN_GRACE_S="10",
    )


class Proc:
    """One ``dockworker server`` or ``dockworker runner`` process, started again as often as
    needed with the same arguments; its output is appended to one log file."""

    def __init__(self, name: str, argv: list[str], log_path: Path, ready: Callable[[Proc], bool]) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self._ready = ready
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self._offset = 0

    def start(self, timeout: float = READY_S) -> None:
        assert not self.alive(), f"{self.name} is already running"
        self.starts += 1
        with self.log_path.open("ab") as out:
            out.write(f"--- start {self.starts} ---\n".encode())
            out.flush()
            self._offset = out.tell()
            self.process = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=service_env(),
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while not self._ready(self):
            if self.process.poll() is not None:
                raise ChaosFailure(f"{self.name} exited with {self.process.returncode}:\n{self.tail()}")
            if time.monotonic() > deadline:
                self.kill()
                raise ChaosFailure(f"{self.name} was not ready within {timeout} s:\n{self.tail()}")
            time.sleep(0.05)

    def output(self) -> str:
        with self.log_path.open("rb") as log:
            log.seek(self._offset)
            return log.read().decode(errors="replace")

    def tail(self, chars: int = 3000) -> str:
        return self.output()[-chars:]

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self, timeout: float) -> int | None:
        """SIGTERM; SIGKILL when it has not exited in time. Returns the exit code of a process
        that exited by itself, None when it had to be killed."""
        if self.process is None:
            return 0
        if self.process.poll() is not None:
            return self.process.returncode
        self.process.terminate()
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None


def _server_ready(port: int) -> Callable[[Proc], bool]:
    return lambda _proc: version_answers(port, timeout=0.5)


def _runner_ready(proc: Proc) -> bool:
    return "runner started" in proc.output()


# --- the rig: database, processes, clients ------------------------------------------------------


@dataclass
class Report:
    seed: int
    lines: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def add(self, line: str) -> None:
        self.lines.append(line)

    def fail(self, problem: str) -> None:
        self.failures.append(problem)
        self.lines.append(f"FAILED: {problem}")

    def render(self) -> str:
        return "\n".join(["", f"==== chaos report (DW_CHAOS_SEED={self.seed}) ====", *self.lines, ""])


class Rig:
    """The database, the processes and the clients of one chaos run. :meth:`close` undoes
    whatever part of it was made."""

    def __init__(self, root: Path, databases: Databases, report: Report) -> None:
        self.root = root
        self.report = report
        self.t0 = time.monotonic()
        self._databases = databases
        self.db_name: str | None = None
        self.store: PostgresStore | None = None
        self.db: psycopg.Connection[tuple[Any, ...]] | None = None
        self.installation_id = ""
        self.project_id = ""
        self.admin_token = ""
        self.url = ""
        self.events: StartEvents | None = None
        self.servers: list[Proc] = []
        self.runners: list[Proc] = []
        self.apis: list[Api] = []
        self.chaos_log: list[str] = []
        self.engine_restarted = False
        self._closed = False

    def open(self) -> None:
        """A fresh database with a project, and the installation id its runners will use."""
        self.db_name = self._databases.create_empty()
        self.url = self._databases.url(self.db_name)
        self.store = PostgresStore(self.url)
        self.store.migrate()
        self.project_id = self.store.create_project("chaos").id
        self.admin_token = self.store.create_token(None, "chaos admin")[0]  # GET /2/runners
        self.installation_id = self.store.installation_id()
        self.db = psycopg.connect(libpq_url(self.url), autocommit=True, connect_timeout=5)
        self.events = StartEvents(self.root, self.installation_id)

    def note(self, line: str) -> None:
        self.chaos_log.append(f"{_elapsed(self.t0)} (epoch {time.time():.3f})  {line}")

    # --- processes ------------------------------------------------------------------------------

    def token(self) -> str:
        result = subprocess.run(
            [*dockworker_command(), "token", "create", "--store", self.url, "--name", "chaos"],
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    def start_servers(self, count: int) -> None:
        token = self.token()
        for index in range(count):
            port = free_port()
            data_dir = self.root / f"server-{index}"
            argv = [
                *dockworker_command(),
                "server",
                "--store",
                self.url,
                "--data-dir",
                str(data_dir),
                "--host",
                LOOPBACK,
                "--port",
                str(port),
            ]
            proc = Proc(f"server-{index}", argv, self.root / f"server-{index}.log", _server_ready(port))
            self.servers.append(proc)
            proc.start()
            self.apis.append(Api(port, self.project_id, token))
        iron = {"project_id": self.project_id, "token": token, "host": LOOPBACK, "port": self.apis[0].port}
        (self.root / "iron.json").write_text(json.dumps(iron))

    def start_runners(self, count: int) -> None:
        for index in range(count):
            argv = [
                *dockworker_command(),
                "runner",
                "--store",
                self.url,
                "--runner-id",
                f"chaos-runner-{index}",
                "--data-dir",
                str(self.root / f"runner-{index}"),
                "--slots",
                str(SLOTS),
            ]
            proc = Proc(f"runner-{index}", argv, self.root / f"runner-{index}.log", _runner_ready)
            self.runners.append(proc)
            proc.start()

    def upload(self, kind: str, script: str) -> None:
        directory = self.root / "packages" / kind
        directory.mkdir(parents=True)
        (directory / f"{kind}.sh").write_text(script)
        result = subprocess.run(
            [
                *dockworker_command(),
                "upload",
                str(directory),
                "--name",
                f"chaos-{kind}",
                "--stack",
                "busybox",
                "--command",
                f"sh {kind}.sh",
            ],
            env=clean_env(DOCKWORKER_IRON_JSON=str(self.root / "iron.json")),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        assert result.returncode == 0, result.stderr

    # --- chaos ----------------------------------------------------------------------------------

    def kill_runner(self, proc: Proc) -> None:
        assert proc.process is not None
        os.kill(proc.process.pid, signal.SIGKILL)
        proc.process.wait(10)

    def restart_runner(self, proc: Proc, stop: threading.Event) -> None:
        """Start it again; a start racing an engine that is not up yet is tried again."""
        deadline = time.monotonic() + READY_S
        while True:
            try:
                proc.start()
                return
            except ChaosFailure:
                if time.monotonic() > deadline or stop.is_set():
                    raise
                self.note(f"{proc.name} did not start; trying again")
                time.sleep(1)

    def restart_engine(self) -> None:
        assert self.events is not None
        if not self.events.current_alive():
            raise ChaosFailure("the engine event watcher stopped before the engine restart")
        stopped_at = time.time()
        started = time.monotonic()
        pid = stop_dockerd(ENGINE_STOP_S)
        self.note(f"engine: dockerd {pid} exited {time.monotonic() - started:.1f} s after SIGTERM")
        start_dockerd()
        if not wait_engine(ENGINE_START_S):
            raise ChaosFailure(f"the Docker engine did not come back within {ENGINE_START_S} s")
        self.events.start(since=stopped_at)
        self.engine_restarted = True
        self.note(f"engine: answering again {time.monotonic() - started:.1f} s after the SIGTERM")

    # --- the database ---------------------------------------------------------------------------

    def query(self, statement: str, *params: Any) -> list[tuple[Any, ...]]:
        assert self.db is not None
        return self.db.execute(statement, params).fetchall()

    def runners_api(self) -> list[dict[str, Any]]:
        """``GET /2/runners``, outside the project's path, with an admin token."""
        api = Api(self.apis[0].port, self.project_id, self.admin_token)
        api.prefix = ""
        found: list[dict[str, Any]] = api.get("/2/runners")["runners"]
        return found

    def status_counts(self) -> Counter[str]:
        return Counter(
            {
                status: count
                for status, count in self.query("SELECT status, count(*) FROM tasks GROUP BY status")
            }
        )

    # --- the end --------------------------------------------------------------------------------

    def stop_services(self) -> dict[str, int | None]:
        codes: dict[str, int | None] = {}
        for proc in self.runners:
            codes[proc.name] = proc.stop(RUNNER_STOP_S)
        for proc in self.servers:
            codes[proc.name] = proc.stop(SERVER_STOP_S)
        return codes

    def close(self) -> None:
        """Stops everything that is left, whatever happened; idempotent."""
        if self._closed:
            return
        self._closed = True
        with contextlib.ExitStack() as stack:
            if self.db_name is not None:
                stack.callback(self._databases.give_back, self.db_name)
            if self.store is not None:
                stack.callback(self.store.close)
            if self.db is not None:
                stack.callback(self.db.close)
            if self.installation_id:
                stack.callback(self._remove_containers)
            if self.events is not None:
                stack.callback(self.events.stop)
            for proc in [*self.servers, *self.runners]:
                stack.callback(proc.kill)
            stack.callback(ensure_engine)

    def _remove_containers(self) -> None:
        left = [c["ID"] for c in installation_containers(self.installation_id)]
        if left:
            _docker("rm", "-f", *left, timeout=60)


def engine_not_restartable() -> str | None:
    """Why this test may not restart the machine's Docker engine (None: it may). It only
    restarts the engine that scripts/setup.sh starts, never one set up otherwise (systemd's, a
    developer's), which it would replace with a different one."""
    pid = dockerd_pid()
    if pid is None:
        return f"no running dockerd found through {DOCKERD_PIDFILE}"
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]
    except OSError as exc:
        return f"cannot read dockerd's command line: {exc}"
    if not argv or Path(argv[0]).name != "dockerd" or argv[1:] != DOCKERD_ARGS.split():
        return f"the Docker engine runs as {' '.join(argv)!r}, not as scripts/setup.sh starts it"
    if os.geteuid() != 0:
        return "restarting the Docker engine needs root"
    return None


@pytest.fixture
def rig(engine: object, pg_databases: Databases, tmp_path: Path) -> Iterator[Rig]:
    reason = engine_not_restartable()
    if reason is not None:
        message = f"the chaos test restarts the Docker engine: {reason}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    seed = int(os.environ.get("DW_CHAOS_SEED") or time.time())
    made = Rig(tmp_path, pg_databases, Report(seed))
    try:
        made.open()
        yield made
    finally:
        made.close()


# --- the load ---------------------------------------------------------------------------------


@dataclass
class Load:
    """What the test asked for: every task queued (id -> kind), and the cancels it sent."""

    kinds: dict[str, str] = field(default_factory=dict)
    cancels: dict[str, str] = field(default_factory=dict)  # task id -> "queued" | "running"
    cancel_answers: dict[str, str] = field(default_factory=dict)  # task id -> status answered
    lock: threading.Lock = field(default_factory=threading.Lock)


def task_body(kind: str, rng: random.Random) -> dict[str, Any]:
    body: dict[str, Any] = {"code_name": f"chaos-{kind}", "timeout": 2 if kind == "timeout" else 30}
    if kind == "medium":
        body["payload"] = f"{rng.uniform(0.5, 1.0):.2f}"
    return body


def cancel(api: Api, load: Load, task_id: str, when: str) -> None:
    status, answer = api.request("POST", f"/tasks/{task_id}/cancel", timeout=30)
    with load.lock:
        load.cancels[task_id] = when
        if status == 200:
            load.cancel_answers[task_id] = answer["status"]
        else:
            assert status == 409, f"cancel {task_id}: HTTP {status}: {answer!r}"
            load.cancel_answers[task_id] = "409"


def queue_all(rig: Rig, load: Load, rng: random.Random) -> None:
    kinds = rng.choices(list(KIND_WEIGHTS), weights=list(KIND_WEIGHTS.values()), k=TASKS)
    for number, start in enumerate(range(0, TASKS, BATCH)):
        batch = kinds[start : start + BATCH]
        api = rig.apis[number % len(rig.apis)]
        answer = api.post("/tasks", {"tasks": [task_body(kind, rng) for kind in batch]})
        ids = [task["id"] for task in answer["tasks"]]
        assert len(ids) == len(batch)
        with load.lock:
            load.kinds.update(zip(ids, batch, strict=True))
        other = rig.apis[(number + 1) % len(rig.apis)]
        for task_id in rng.sample(
            [i for i, k in zip(ids, batch, strict=True) if k in ("ok", "medium")], QUEUED_CANCELS_PER_BATCH
        ):
            cancel(other, load, task_id, "queued")
        time.sleep(BATCH_GAP_S)


def cancel_running(
    rig: Rig, load: Load, rng: random.Random, quiet: threading.Event, stop: threading.Event, errors: list[str]
) -> None:
    sent = 0
    try:
        while sent < RUNNING_CANCELS and not quiet.is_set() and not stop.wait(rng.uniform(0.5, 1.5)):
            api = rng.choice(rig.apis)
            running = api.get("/tasks?running=1&code_name=chaos-medium&per_page=30")["tasks"]
            if running:
                cancel(api, load, rng.choice(running)["id"], "running")
                sent += 1
    except Exception as exc:
        errors.append(f"cancel thread: {type(exc).__name__}: {exc}")


def chaos(
    rig: Rig, rng: random.Random, quiet: threading.Event, stop: threading.Event, errors: list[str]
) -> None:
    """SIGKILL a random runner and start it again (same id, same data directory) every few
    seconds while tasks remain (at least KILL_CYCLES times); restart the Docker engine once."""
    try:
        for cycle in range(MAX_KILL_CYCLES):
            if cycle >= KILL_CYCLES and quiet.is_set():
                return
            if stop.wait(rng.uniform(*KILL_GAP_S)):
                return
            dead = [proc for proc in rig.runners if not proc.alive()]
            if dead:
                errors.append(f"runners died by themselves: {[proc.name for proc in dead]}")
                for proc in dead:
                    rig.restart_runner(proc, stop)
            victim = rng.choice(rig.runners)
            rig.kill_runner(victim)
            down = rng.uniform(*(SHORT_DOWN_S if cycle % 2 == 0 else LONG_DOWN_S))
            rig.note(f"kill -9 {victim.name}; down for {down:.1f} s")
            if stop.wait(down):
                return
            rig.restart_runner(victim, stop)
            rig.note(f"{victim.name} started again (start {victim.starts})")
            if cycle + 1 == ENGINE_RESTART_AFTER_CYCLE:
                if stop.wait(rng.uniform(2.0, 4.0)):
                    return
                rig.restart_engine()
    except Exception as exc:
        errors.append(f"chaos thread: {type(exc).__name__}: {exc}")
        rig.note(f"chaos thread failed: {exc}")


def wait_settled(rig: Rig, deadline: float, report: Report) -> bool:
    last = 0.0
    while True:
        counts = rig.status_counts()
        active = sum(counts[s] for s in ACTIVE)
        if time.monotonic() - last >= PROGRESS_EVERY_S:
            report.add(f"{_elapsed(rig.t0)}  progress: {dict(sorted(counts.items()))}")
            last = time.monotonic()
        if active == 0:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)


def wait_no_containers(rig: Rig, timeout: float) -> tuple[list[dict[str, Any]], float]:
    started = time.monotonic()
    while True:
        left = installation_containers(rig.installation_id)
        if not left or time.monotonic() - started > timeout:
            return left, time.monotonic() - started
        time.sleep(1)


# --- the checks ---------------------------------------------------------------------------------


def check_tasks(rig: Rig, load: Load, report: Report) -> dict[str, tuple[str, int, str]]:
    rows = rig.query("SELECT id, status, attempts, code_name, coalesce(msg, '') FROM tasks")
    tasks = {row[0]: (row[1], int(row[2]), row[4]) for row in rows}
    counts = Counter(status for status, _, _ in tasks.values())
    report.add(f"tasks queued: {len(load.kinds)}; in the store: {len(tasks)}")
    report.add("per status: " + ", ".join(f"{s} {n}" for s, n in sorted(counts.items())))
    lost = sorted(set(load.kinds) - set(tasks))
    extra = sorted(set(tasks) - set(load.kinds))
    unfinished = sorted(t for t, (status, _, _) in tasks.items() if status not in TERMINAL)
    report.add(f"lost: {len(lost)}; unexpected: {len(extra)}; not terminal: {len(unfinished)}")
    if lost or extra or unfinished:
        report.fail(f"lost {lost[:10]}, unexpected {extra[:10]}, not terminal {unfinished[:10]}")

    per_kind: dict[str, Counter[str]] = defaultdict(Counter)
    for task_id, kind in load.kinds.items():
        per_kind[kind][tasks.get(task_id, ("lost", 0, ""))[0]] += 1
    for kind in KIND_WEIGHTS:
        outcome = ", ".join(f"{s} {n}" for s, n in sorted(per_kind[kind].items()))
        report.add(f"  chaos-{kind:<8} (expected {EXPECTED[kind]}): {outcome}")
    unusual = Counter(
        (load.kinds[t], status, msg[:70])
        for t, (status, _, msg) in tasks.items()
        if t in load.kinds and status != EXPECTED[load.kinds[t]] and status != "cancelled"
    )
    for (kind, status, msg), count in sorted(unusual.items()):
        report.add(f"  not as expected: {count} x chaos-{kind} {status}: {msg!r}")
    errors = [
        (t, msg)
        for t, (status, _, msg) in tasks.items()
        if status == "error" and t in load.kinds and load.kinds[t] != "fail"
    ]
    for task_id, msg in sorted(errors)[:10]:
        report.add(f"    {task_id} error: {msg[:300]}")

    said_cancelled = [t for t, answer in load.cancel_answers.items() if answer == "cancelled"]
    wrong = [t for t in said_cancelled if tasks.get(t, ("lost",))[0] != "cancelled"]
    by_when = Counter(load.cancels.values())
    report.add(
        f"cancels sent: {by_when['queued']} while queued, {by_when['running']} while running; answers "
        + ", ".join(f"{a} {n}" for a, n in sorted(Counter(load.cancel_answers.values()).items()))
    )
    if wrong:
        report.fail(f"the API answered 'cancelled' but the task ended otherwise: {wrong[:10]}")
    return tasks


def check_terminal_events(rig: Rig, tasks: dict[str, tuple[str, int, str]], report: Report) -> None:
    """Each task's terminal state is written exactly once (no double report)."""
    terminal = tuple(sorted(TERMINAL))
    rows = rig.query(
        "SELECT task_id, array_agg(kind ORDER BY id) FROM task_events WHERE kind = ANY(%s) GROUP BY task_id",
        list(terminal),
    )
    written = {task_id: list(kinds) for task_id, kinds in rows}
    problems = [
        f"{task_id}: status {status}, terminal events {written.get(task_id, [])}"
        for task_id, (status, _, _) in tasks.items()
        if written.get(task_id, []) != [status]
    ]
    kinds = rig.query("SELECT kind, count(*) FROM task_events GROUP BY kind ORDER BY kind")
    report.add("task events: " + ", ".join(f"{kind} {count}" for kind, count in kinds))
    reasons = rig.query(
        "SELECT regexp_replace(left(detail, 90), '^attempt [0-9]+: |[0-9a-f]{12,}', '', 'g') AS reason,"
        " count(*) FROM task_events WHERE kind = 'infra_retry' GROUP BY reason ORDER BY count(*) DESC"
    )
    for reason, count in reasons:
        report.add(f"  infra_retry {count} x {reason}")
    for task_id, detail in rig.query(
        "SELECT task_id, detail FROM task_events WHERE kind = 'late_report_refused' ORDER BY id"
    ):
        report.add(f"  late_report_refused {task_id}: {detail} (task {tasks.get(task_id, ('?',))[0]})")
    report.add(f"tasks whose terminal state was not written exactly once: {len(problems)}")
    if problems:
        report.fail("terminal state not written exactly once: " + "; ".join(problems[:10]))


def check_executions(
    rig: Rig, tasks: dict[str, tuple[str, int, str]], starts: dict[str, list[dict[str, Any]]], report: Report
) -> None:
    attempts = sum(n for _, n, _ in tasks.values())
    executions = sum(len(found) for task_id, found in starts.items() if task_id in tasks)
    stray = {task_id: found for task_id, found in starts.items() if task_id not in tasks}
    mismatched = {
        task_id: (n, len(starts.get(task_id, [])))
        for task_id, (_, n, _) in tasks.items()
        if n != len(starts.get(task_id, []))
    }
    report.add(
        f"container starts seen on the engine: {executions}; attempts recorded: {attempts}; "
        f"tasks whose starts != attempts: {len(mismatched)}"
    )
    for task_id, (n, seen) in sorted(mismatched.items())[:20]:
        events = rig.query(
            "SELECT round(at::numeric, 3), kind, detail FROM task_events WHERE task_id = %s ORDER BY id",
            task_id,
        )
        report.add(f"  {task_id}: attempts {n}, starts {seen} {starts.get(task_id, [])}")
        for at, kind, detail in events:
            report.add(f"      {at} {kind} {detail}")
    if stray:
        report.fail(f"starts of containers for tasks not in the store: {stray}")
    if mismatched:
        listed = "; ".join(f"{t}: attempts {n}, starts {seen}" for t, (n, seen) in sorted(mismatched.items()))
        report.fail(f"{len(mismatched)} task(s) whose container starts differ from their attempts: {listed}")


# --- the test -----------------------------------------------------------------------------------


@pytest.mark.timeout(1500)
def test_chaos_every_task_ends_once_and_nothing_is_left(rig: Rig, capsys: pytest.CaptureFixture[str]) -> None:
    report = rig.report
    rng = random.Random(report.seed)
    try:
        run(rig, rng, report)
    finally:
        report.lines[0:0] = ["chaos:", *(f"  {line}" for line in rig.chaos_log)]
        with capsys.disabled():
            print(report.render(), flush=True)
    assert not report.failures, "\n".join(report.failures)


def run(rig: Rig, rng: random.Random, report: Report) -> None:
    assert rig.events is not None
    rig.events.start(since=time.time() - 1)
    rig.start_servers(2)
    rig.start_runners(RUNNERS)
    for kind, script in PACKAGES.items():
        rig.upload(kind, script)
    report.add(f"{_elapsed(rig.t0)}  2 servers, {RUNNERS} runners x {SLOTS} slots up")
    report.add(f"installation {rig.installation_id}, database {rig.db_name}")

    load = Load()
    quiet = threading.Event()  # every task has ended: the chaos may stop
    stop = threading.Event()  # stop now
    errors: list[str] = []
    threads = [
        threading.Thread(target=chaos, args=(rig, rng, quiet, stop, errors), name="chaos", daemon=True),
        threading.Thread(
            target=cancel_running,
            args=(rig, load, random.Random(rng.random()), quiet, stop, errors),
            name="cancels",
            daemon=True,
        ),
    ]
    started = time.monotonic()
    settled = False
    try:
        for thread in threads:
            thread.start()
        queue_all(rig, load, rng)
        report.add(f"{_elapsed(rig.t0)}  {len(load.kinds)} tasks queued")
        settled = wait_settled(rig, time.monotonic() + SETTLE_S, report)
        took = time.monotonic() - started
        report.add(f"{_elapsed(rig.t0)}  all terminal: {settled} ({took:.0f} s after the first batch)")
        quiet.set()
        for thread in threads:
            thread.join(THREAD_JOIN_S)
    finally:
        stop.set()
        for thread in threads:
            thread.join(THREAD_JOIN_S)
    # The chaos may have gone on after the last task ended: every task must still be terminal.
    settled = settled and wait_settled(rig, time.monotonic() + SETTLE_S, report)
    for error in errors:
        report.fail(error)
    kills = sum(1 for line in rig.chaos_log if "kill -9" in line)
    if kills < 5 or not rig.engine_restarted:
        report.fail(f"not enough chaos: {kills} runner kills, engine restarted: {rig.engine_restarted}")

    left, waited = wait_no_containers(rig, REAP_S)
    report.add(f"containers of the installation left: {len(left)} (waited {waited:.0f} s for the reaper)")
    if left:
        report.fail(
            "containers left on the engine: "
            + "; ".join(f"{c['ID'][:12]} {c['State']} {c['Labels']}" for c in left)
        )
    time.sleep(1)  # the last start events reach the watcher's file
    watching = rig.events.current_alive()
    rig.events.stop()
    if not watching:
        report.fail("the engine event watcher stopped during the run: the start counts are incomplete")

    tasks = check_tasks(rig, load, report)
    check_terminal_events(rig, tasks, report)
    check_executions(rig, tasks, rig.events.starts(), report)
    for api in rig.apis:
        pending = api.get("/tasks?queued=1&preparing=1&running=1&per_page=100")["tasks"]
        report.add(f"queue through the API on port {api.port}: {len(pending)} queued/preparing/running")
        if pending:
            report.fail(f"the queue is not empty: {[t['id'] for t in pending][:10]}")
    report.add(
        "runners: "
        + ", ".join(f"{r['id']} alive={r['alive']} running={r['running']}" for r in rig.runners_api())
    )
    codes = rig.stop_services()
    report.add("exit codes after SIGTERM: " + ", ".join(f"{name} {code}" for name, code in codes.items()))
    if any(code != 0 for code in codes.values()):
        report.fail(f"a process did not exit 0 after SIGTERM (None: killed after the grace period): {codes}")
