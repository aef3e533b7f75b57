"""Restarting this machine's Docker engine, for the one test that does (``test_chaos.py``).

Only the engine that scripts/setup.sh starts is ever restarted, with the same arguments; never
one set up otherwise (systemd's, a developer's), which it would replace with a different one."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from .engine_watch import docker

DOCKERD_ARGS = "--bridge=none --iptables=false --ip-forward=false --ip-masq=false"
DOCKERD_LOG = Path("/var/log/dockerd.log")
DOCKERD_PIDFILE = Path("/var/run/docker.pid")
ENGINE_START_S = 60.0


class EngineRestartFailed(Exception):
    """The engine did not stop, or did not come back."""


def engine_answers() -> bool:
    try:
        return docker("info", "--format", "{{.ServerVersion}}", timeout=20).returncode == 0
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
        raise EngineRestartFailed(f"no running dockerd (pid file {DOCKERD_PIDFILE})")
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            raise EngineRestartFailed(f"dockerd {pid} did not exit within {timeout} s of SIGTERM (killed)")
        time.sleep(0.1)
    return pid


def ensure_engine() -> None:
    """Whatever happened: leave a running engine behind."""
    if engine_answers():
        return
    if dockerd_pid() is None:
        start_dockerd()
    if not wait_engine(ENGINE_START_S):
        raise EngineRestartFailed(f"the Docker engine does not answer; see {DOCKERD_LOG}")


def engine_not_restartable() -> str | None:
    """Why this test may not restart the machine's Docker engine (None: it may)."""
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
