"""The in-process wake-up signal."""

from __future__ import annotations

import threading
import time

from dockworker.store.wakeup import WorkSignal


def test_a_wait_without_signal_lasts_the_timeout() -> None:
    signal = WorkSignal()
    started = time.monotonic()
    assert not signal.wait(0.1)
    assert time.monotonic() - started >= 0.09


def test_a_signal_sent_before_the_wait_is_not_lost() -> None:
    signal = WorkSignal()
    signal.notify()
    started = time.monotonic()
    assert signal.wait(5)
    assert time.monotonic() - started < 0.1
    assert not signal.wait(0.05)  # seen once, not twice


def test_every_waiting_thread_wakes() -> None:
    signal = WorkSignal()
    signal.notify()
    woken: list[float] = []
    ready = threading.Barrier(4)

    def waiter() -> None:
        signal.wait(0)  # catch up with the signal sent before this thread existed
        ready.wait()
        started = time.monotonic()
        signal.wait(5)
        woken.append(time.monotonic() - started)

    threads = [threading.Thread(target=waiter) for _ in range(3)]
    for thread in threads:
        thread.start()
    ready.wait()
    time.sleep(0.05)
    signal.notify()
    for thread in threads:
        thread.join(5)
    assert len(woken) == 3 and max(woken) < 1
