"""Waiting for a file to be written, or a process to end, without polling: inotify (through the C
library) and pidfds. Used to learn the moment a container's runtime has written its pid file.

The inotify instances are kept and used again, never closed after a wait: closing one waits for
the kernel's fsnotify grace period, which took 15 ms on every close while a container was
starting here (a third of a no-op task's start on the OCI backend). A watch is removed at once
(its memory is reclaimed later by the kernel), and what a removed watch still queued only wakes
a later wait early, to look at its file again."""

from __future__ import annotations

import ctypes
import os
import select
import threading
import time
from functools import lru_cache
from pathlib import Path

IN_MODIFY = 0x00000002
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000
# A file written in place (create, write, close) or moved there; each event makes the waiter
# look at its size again.
WATCHED = IN_CREATE | IN_MODIFY | IN_CLOSE_WRITE | IN_MOVED_TO
# Instances kept for reuse: as many as waits at once (a runner's slots), beyond which they close.
MAX_KEPT = 64


@lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.inotify_init1.argtypes = [ctypes.c_int]
    libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
    libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
    return libc


class _Instances:
    """Idle inotify instances, each used by one wait at a time."""

    def __init__(self) -> None:
        self._idle: list[int] = []
        self._lock = threading.Lock()

    def take(self) -> int:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        notify: int = _libc().inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if notify < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        return notify

    def give_back(self, notify: int) -> None:
        _drain(notify)
        with self._lock:
            if len(self._idle) < MAX_KEPT:
                self._idle.append(notify)
                return
        os.close(notify)

    def idle(self) -> int:
        with self._lock:
            return len(self._idle)


_instances = _Instances()


def wait_for_file(path: Path, process_pid: int, timeout: float) -> bool:
    """Wait until ``path`` has content, or the process ``process_pid`` has ended, or the
    timeout; True when the file has content."""
    libc = _libc()
    notify = _instances.take()
    watch = libc.inotify_add_watch(notify, str(path.parent).encode(), WATCHED)
    if watch < 0:
        error = ctypes.get_errno()
        _instances.give_back(notify)
        raise OSError(error, f"inotify_add_watch {path.parent}")
    pidfd: int | None = None
    try:
        try:
            pidfd = os.pidfd_open(process_pid)
        except ProcessLookupError:
            pidfd = None
        deadline = time.monotonic() + timeout
        while True:
            if _has_content(path):
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0 or pidfd is None:
                return _has_content(path)
            readable, _, _ = select.select([notify, pidfd], [], [], remaining)
            if pidfd in readable:
                return _has_content(path)
            if notify in readable:
                _drain(notify)
    finally:
        libc.inotify_rm_watch(notify, watch)
        _instances.give_back(notify)
        if pidfd is not None:
            os.close(pidfd)


def _has_content(path: Path) -> bool:
    try:
        return path.stat().st_size > 0
    except FileNotFoundError:
        return False


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass
