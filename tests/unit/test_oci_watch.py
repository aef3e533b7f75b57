"""Waiting for a runtime's pid file (engine/oci/watch.py): woken by the write or by the process's
end, and the inotify instances kept for the next wait (closing one can take a grace period)."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dockworker.engine.oci import watch

pytestmark = pytest.mark.timeout(20)


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(["sleep", "30"])
    yield process
    process.kill()
    process.wait()


def _write_later(path: Path, delay: float) -> threading.Thread:
    def write() -> None:
        time.sleep(delay)
        path.write_text("4242\n")

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    return thread


def _inotify_instances() -> int:
    """This process's open inotify instances."""
    found = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            found += os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:inotify"
        except OSError:  # closed meanwhile
            continue
    return found


def test_the_write_wakes_the_wait(tmp_path: Path, sleeper: subprocess.Popen[bytes]) -> None:
    _write_later(tmp_path / "pid", 0.2)
    started = time.monotonic()
    assert watch.wait_for_file(tmp_path / "pid", sleeper.pid, timeout=15)
    assert time.monotonic() - started < 10  # the write, not the timeout (nor the sleeper's end)


def test_the_process_ending_first_ends_the_wait(tmp_path: Path) -> None:
    short = subprocess.Popen(["sleep", "0.2"])
    try:
        assert not watch.wait_for_file(tmp_path / "pid", short.pid, timeout=15)
    finally:
        short.wait()


def test_instances_are_used_again_and_what_they_queued_wakes_nothing_wrongly(
    tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    for _ in range(3):  # let the pool settle
        (first / "pid").unlink(missing_ok=True)
        _write_later(first / "pid", 0.05).join()
        assert watch.wait_for_file(first / "pid", sleeper.pid, timeout=5)
    instances = _inotify_instances()
    for index in range(20):
        target = first if index % 2 else second
        (target / "pid").unlink(missing_ok=True)
        _write_later(target / "pid", 0.01)
        assert watch.wait_for_file(target / "pid", sleeper.pid, timeout=5)
    assert _inotify_instances() == instances  # no instance made (nor leaked) per wait
    assert watch._instances.idle() >= 1  # kept for the next wait, not closed
    # Writes to the first directory after its wait cannot end a wait on the second: the file
    # waited for is what counts (and a wait whose process ends without it says so).
    (first / "pid").write_text("1\n")
    (second / "pid").unlink()
    short = subprocess.Popen(["sleep", "0.3"])
    try:
        assert not watch.wait_for_file(second / "pid", short.pid, timeout=5)
    finally:
        short.wait()
