"""Waiting for a file to be written, or a process to end, without polling: inotify (through the C
library) and pidfds. Used to learn the moment a container's runtime has written its pid file."""

from __future__ import annotations

import ctypes
import os
import select
import time
from functools import lru_cache
from pathlib import Path

IN_CLOSE_WRITE = 0x00000008
IN_MOVED_TO = 0x00000080
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000


@lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.inotify_init1.argtypes = [ctypes.c_int]
    libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
    return libc


def wait_for_file(path: Path, process_pid: int, timeout: float) -> bool:
    """Wait until ``path`` has content, or the process ``process_pid`` has ended, or the
    timeout; True when the file has content."""
    libc = _libc()
    notify = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
    if notify < 0:
        raise OSError(ctypes.get_errno(), "inotify_init1")
    pidfd: int | None = None
    try:
        if libc.inotify_add_watch(notify, str(path.parent).encode(), IN_CLOSE_WRITE | IN_MOVED_TO) < 0:
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {path.parent}")
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
        os.close(notify)
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
