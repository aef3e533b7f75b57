"""Supervisors started before their task: what a container's start costs that needs no task is
done ahead, off the task's path.

A parked supervisor owns a container directory (its id chosen), holds its lock, runs in its own
mount namespace, and (where dockworker places containers in their cgroups, see ``cgroups.py``)
its runtime side already sits in the container's cgroup: that move is what waits for a kernel
grace period, 6 to 16 ms here. :meth:`Parking.take` hands one out (parking one there and then
when none is spare) and has the next one parked on a thread of its own.

A parked supervisor that is never started (the engine closes, its container is removed, the
runner dies) reads the end of its pipes and exits without starting anything; the engine's sweep
removes what such a one leaves."""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from ...errors import InfrastructureError
from .supervisor import ContainerDir

log = logging.getLogger("dockworker.engine.oci")

REPORT_TIMEOUT_S = 10.0
DISMISS_WAIT_S = 5.0
SPARE = 2
RETRY_AFTER_S = 1.0


@dataclass(kw_only=True)
class ParkedSupervisor:
    container: ContainerDir
    process: subprocess.Popen[bytes]
    task_line: int  # the write end of the pipe its runtime side waits on
    output_line: int  # the write end of the pipe its output side waits on
    runtime_pid: int  # its runtime side: the runtime itself once started

    def launch(self, *, lowerdir: str, scratch_bytes: int, keep_bytes: int) -> None:
        """Start the container: the output side's line first, so that a runner gone between
        the two leaves a supervisor that started nothing."""
        try:
            os.write(self.output_line, f"{keep_bytes}\n".encode())
            os.write(self.task_line, f"{lowerdir} {scratch_bytes}\n".encode())
        except OSError as exc:
            raise InfrastructureError(f"start container: its supervisor is gone: {exc}") from exc
        finally:
            self._close_lines()

    def dismiss(self) -> None:
        """End it without a start; returns once it has exited (killed if it did not)."""
        self._close_lines()
        try:
            self.process.wait(DISMISS_WAIT_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def _close_lines(self) -> None:
        for name in ("task_line", "output_line"):
            fd = getattr(self, name)
            if fd >= 0:
                setattr(self, name, -1)
                with contextlib.suppress(OSError):
                    os.close(fd)


def read_report(fd: int, process: subprocess.Popen[bytes], timeout: float = REPORT_TIMEOUT_S) -> int:
    """The process id the supervisor's runtime side reports, one line on ``fd``."""
    deadline = time.monotonic() + timeout
    data = b""
    while not data.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        readable, _, _ = select.select([fd], [], [], max(remaining, 0))
        if not readable:
            raise InfrastructureError(f"park a supervisor: no report after {timeout:.0f} s")
        chunk = os.read(fd, 64)
        if not chunk:
            raise InfrastructureError(
                f"park a supervisor: it ended before its report (status {process.poll()})"
            )
        data += chunk
    try:
        return int(data)
    except ValueError as exc:
        raise InfrastructureError(f"park a supervisor: unreadable report {data!r}") from exc


Unit = TypeVar("Unit")


class Parking(Generic[Unit]):
    """Spare parked supervisors (units), kept at ``spare`` by a thread of their own. Thread-safe."""

    def __init__(
        self,
        park: Callable[[], Unit],
        discard: Callable[[Unit], None],
        *,
        spare: int = SPARE,
    ) -> None:
        self._park = park
        self._discard = discard
        self._spare = spare
        self._idle: list[Unit] = []
        self._lock = threading.Lock()
        self._wanted = threading.Condition(self._lock)
        self._closed = False
        self._thread: threading.Thread | None = None

    def take(self) -> Unit:
        with self._lock:
            if self._closed:
                raise InfrastructureError("the OCI engine is closed")
            unit = self._idle.pop() if self._idle else None
            if self._thread is None and self._spare > 0:
                self._thread = threading.Thread(target=self._keep_spare, name="oci-parking", daemon=True)
                self._thread.start()
            self._wanted.notify()
        return unit if unit is not None else self._park()

    def _keep_spare(self) -> None:
        while True:
            with self._lock:
                self._wanted.wait_for(lambda: self._closed or len(self._idle) < self._spare)
                if self._closed:
                    return
            try:
                unit = self._park()
            except Exception as exc:
                log.warning("oci.park_failed: %s", exc)
                with self._lock:
                    self._wanted.wait_for(lambda: self._closed, RETRY_AFTER_S)
                continue
            with self._lock:
                if not self._closed:
                    self._idle.append(unit)
                    continue
            self._discard(unit)
            return

    def close(self) -> None:
        """Dismiss the spare ones (and stop parking)."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
            thread = self._thread
            self._wanted.notify_all()
        if thread is not None:
            thread.join(REPORT_TIMEOUT_S + DISMISS_WAIT_S)
        for unit in idle:
            self._discard(unit)
