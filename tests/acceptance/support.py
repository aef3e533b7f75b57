"""Helpers of the acceptance tier: a real ``dockworker up`` process, the CLI as a subprocess, a
tiny HTTP client for checks, and the Docker containers of a task.

Everything talks to 127.0.0.1 only (or to the test's own veth links, see netns.py), and every
wait is bounded."""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
CLI_TIMEOUT_S = 60.0
TASK_LABEL = "dockworker.task"
TERMINAL = frozenset({"complete", "error", "cancelled", "killed", "timeout"})
LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def dockworker_command() -> list[str]:
    """The installed console script, or the same entry point through this interpreter."""
    script = shutil.which("dockworker", path=str(Path(sys.executable).parent))
    if script:
        return [script]
    return [sys.executable, "-c", "from dockworker.cli.main import main; main()"]


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for a child process: no stray dockworker/IronWorker settings, no proxy
    for loopback, and a wide terminal so that rich does not wrap lines."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCKWORKER_", "IRON_"))}
    env.update(NO_PROXY=f"{LOOPBACK},localhost", no_proxy=f"{LOOPBACK},localhost", COLUMNS="200")
    env.update(extra)
    return env


def write_files(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (directory / name).write_text(content)
    return directory


def zip_names(data: bytes) -> list[str]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.testzip() is None, "corrupt member in the zip"
        return archive.namelist()


class Api:
    """A minimal IronWorker v2 client over http.client (no proxies, no retries)."""

    def __init__(self, port: int, project_id: str, token: str, host: str = LOOPBACK) -> None:
        self.host = host
        self.port = port
        self.prefix = f"/2/projects/{project_id}"
        self.token = token

    def request(self, method: str, path: str, body: Any = None, timeout: float = 15) -> tuple[int, Any]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            headers = {"Authorization": f"OAuth {self.token}", "Accept": "application/json"}
            encoded = None
            if body is not None:
                encoded = json.dumps(body).encode()
                headers["Content-Type"] = "application/json"
            conn.request(method, self.prefix + path, body=encoded, headers=headers)
            response = conn.getresponse()
            raw = response.read()
            if response.getheader("Content-Type", "").startswith("application/json"):
                return response.status, json.loads(raw)
            return response.status, raw
        finally:
            conn.close()

    def get(self, path: str) -> Any:
        status, body = self.request("GET", path)
        assert status == 200, f"GET {path}: HTTP {status}: {body!r}"
        return body

    def post(self, path: str, body: Any = None) -> Any:
        status, answer = self.request("POST", path, body)
        assert status == 200, f"POST {path}: HTTP {status}: {answer!r}"
        return answer

    def task(self, task_id: str) -> dict[str, Any]:
        found: dict[str, Any] = self.get(f"/tasks/{task_id}")
        return found

    def wait_status(
        self, task_id: str, statuses: set[str] | frozenset[str], timeout: float = 30
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            task = self.task(task_id)
            if task["status"] in statuses:
                return task
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"task {task_id} still {task['status']} after {timeout} s (msg {task['msg']!r})"
                )
            time.sleep(0.05)

    def cancel_quietly(self, task_id: str) -> None:
        """Test cleanup: stop a task if it is still going."""
        with contextlib.suppress(OSError):
            self.request("POST", f"/tasks/{task_id}/cancel")


def version_answers(port: int, timeout: float = 1.0, host: str = LOOPBACK) -> bool:
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", "/version")
        response = conn.getresponse()
        body = response.read()
        return response.status == 200 and json.loads(body).get("api") == "2"
    except (OSError, ValueError, http.client.HTTPException):
        return False
    finally:
        conn.close()


class Service:
    """One ``dockworker up`` process on its own data directory and port."""

    def __init__(
        self, data_dir: Path, port: int | None = None, slots: int = 2, args: tuple[str, ...] = ()
    ) -> None:
        """``args``: more options of ``dockworker up`` (e.g. ``--runtime oci``)."""
        self.data_dir = data_dir
        self.args = args
        self.port = port or free_port()
        self.slots = slots
        self.process: subprocess.Popen[bytes] | None = None
        self.output = data_dir.parent / f"{data_dir.name}-service-{self.port}.log"
        self._starts = 0

    @property
    def iron_json(self) -> Path:
        return self.data_dir / "iron.json"

    def iron(self) -> dict[str, Any]:
        config: dict[str, Any] = json.loads(self.iron_json.read_text())
        return config

    def api(self) -> Api:
        config = self.iron()
        return Api(self.port, config["project_id"], config["token"])

    def start(self) -> None:
        assert self.process is None or self.process.poll() is not None, "already running"
        self._starts += 1
        with self.output.open("ab") as log:
            log.write(f"--- start {self._starts} ---\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                [
                    *dockworker_command(),
                    "up",
                    "--data-dir",
                    str(self.data_dir),
                    "--port",
                    str(self.port),
                    "--slots",
                    str(self.slots),
                    *self.args,
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=clean_env(),
                cwd=self.data_dir.parent,
                start_new_session=True,  # a Ctrl-C of pytest reaches the fixture, not the service
            )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not version_answers(self.port):
            if self.process.poll() is not None:
                raise AssertionError(
                    f"dockworker up exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(
                    f"dockworker up did not answer /version in {READY_TIMEOUT_S} s:\n{self.log_tail()}"
                )
            time.sleep(0.05)
        assert self.iron_json.is_file(), "iron.json was not written on start"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def send(self, sig: signal.Signals) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def wait_exit(self, timeout: float) -> int | None:
        assert self.process is not None
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        if self.alive():
            assert self.process is not None
            self.process.kill()
            self.process.wait(10)

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM and wait; SIGKILL (and fail) when it does not exit in time."""
        if not self.alive():
            assert self.process is not None
            return self.process.returncode
        self.send(signal.SIGTERM)
        code = self.wait_exit(timeout)
        if code is None:
            self.kill()
            raise AssertionError(
                f"dockworker up did not exit within {timeout} s of SIGTERM:\n{self.log_tail()}"
            )
        return code

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.output.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no output)"


def run_cli(service: Service, *args: str, timeout: float = CLI_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    """``dockworker ARGS`` configured through DOCKWORKER_IRON_JSON, output captured."""
    return subprocess.run(
        [*dockworker_command(), *args],
        env=clean_env(DOCKWORKER_IRON_JSON=str(service.iron_json)),
        cwd=service.data_dir.parent,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def popen_cli(service: Service, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*dockworker_command(), *args],
        env=clean_env(DOCKWORKER_IRON_JSON=str(service.iron_json)),
        cwd=service.data_dir.parent,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        bufsize=1,
    )


def task_containers(task_id: str) -> list[str]:
    """Ids of the containers (any state) labelled with this task, as ``docker ps -a`` sees them."""
    docker = shutil.which("docker")
    if docker is not None:
        result = subprocess.run(
            [docker, "ps", "-a", "-q", "--no-trunc", "--filter", f"label={TASK_LABEL}={task_id}"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        return result.stdout.split()
    from dockworker.engine import DockerEngine

    engine = DockerEngine()
    try:
        return [c.id for c in engine.list_labelled(TASK_LABEL) if c.labels.get(TASK_LABEL) == task_id]
    finally:
        engine.close()


def remove_task_containers(task_id: str) -> None:
    """Test cleanup: force-remove what a failed test may have left behind (only this task's)."""
    ids = task_containers(task_id)
    docker = shutil.which("docker")
    if ids and docker is not None:
        subprocess.run([docker, "rm", "-f", *ids], capture_output=True, timeout=30, check=False)
    elif ids:
        from dockworker.engine import DockerEngine

        engine = DockerEngine()
        try:
            for container_id in ids:
                engine.remove(container_id)
        finally:
            engine.close()


@contextlib.contextmanager
def running_service(data_dir: Path, port: int | None = None, args: tuple[str, ...] = ()) -> Iterator[Service]:
    """A service of the test's own. On the way out it is stopped however the test went: SIGTERM,
    a second SIGTERM (skip the grace period), then SIGKILL; no process is left behind."""
    svc = Service(data_dir, port, args=args)
    try:
        svc.start()
        yield svc
    finally:
        for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGTERM, 10.0)):
            if svc.alive():
                svc.send(sig)
                svc.wait_exit(wait)
        svc.kill()


def upload_script(service: Service, directory: Path, name: str, script: str) -> None:
    """Upload ``script`` as NAME.sh in a busybox code package NAME, through the CLI."""
    write_files(directory, {f"{name}.sh": script})
    result = run_cli(
        service, "upload", str(directory), "--name", name, "--stack", "busybox", "--command", f"sh {name}.sh"
    )
    assert result.returncode == 0, result.stderr


def queue_task(service: Service, name: str, payload: str = "") -> str:
    result = run_cli(service, "queue", name, "--payload", payload)
    assert result.returncode == 0, result.stderr
    task_id = result.stdout.strip()
    assert len(task_id.split()) == 1, f"expected one task id, got {result.stdout!r}"
    return task_id
