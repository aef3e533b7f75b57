"""Long-running dockworker processes of a test (``dockworker server``, ``dockworker runner``),
started again as often as the test needs with the same arguments, their output appended to one
log file per process. Every wait is bounded; the caller kills what is left (:meth:`Proc.kill`)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from .support import version_answers

READY_S = 60.0


class ProcFailed(Exception):
    """A process did not start, or exited when it should have been ready."""


class Proc:
    """One process, started again as often as needed with the same arguments; its output is
    appended to one log file."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        log_path: Path,
        ready: Callable[[Proc], bool],
        env: dict[str, str],
    ) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.env = env
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
                env=self.env,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while not self._ready(self):
            if self.process.poll() is not None:
                raise ProcFailed(f"{self.name} exited with {self.process.returncode}:\n{self.tail()}")
            if time.monotonic() > deadline:
                self.kill()
                raise ProcFailed(f"{self.name} was not ready within {timeout} s:\n{self.tail()}")
            time.sleep(0.05)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def output(self) -> str:
        """What the current (or last) start of the process wrote."""
        with self.log_path.open("rb") as log:
            log.seek(self._offset)
            return log.read().decode(errors="replace")

    def tail(self, chars: int = 3000) -> str:
        return self.output()[-chars:]

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL, and wait for it to be gone."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def wait_exit(self, timeout: float) -> int | None:
        assert self.process is not None
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout: float) -> int | None:
        """SIGTERM; SIGKILL when it has not exited in time. Returns the exit code of a process
        that exited by itself, None when it had to be killed."""
        if self.process is None:
            return 0
        if self.process.poll() is not None:
            return self.process.returncode
        self.process.terminate()
        code = self.wait_exit(timeout)
        if code is None:
            self.kill()
        return code


def server_ready(port: int, host: str) -> Callable[[Proc], bool]:
    """An API server is ready when it answers ``GET /version``."""
    return lambda _proc: version_answers(port, timeout=0.5, host=host)


def said(marker: str) -> Callable[[Proc], bool]:
    """A runner is ready when its log says so (``runner started``, ``runner of cluster X
    started``)."""
    return lambda proc: marker in proc.output()
