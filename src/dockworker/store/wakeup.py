"""Wake-ups: how a runner waiting for work learns that work may have arrived.

Within one process a ``WorkSignal`` is enough. Across processes each dialect has its own means
(PostgreSQL: LISTEN/NOTIFY; SQLite: none, so the waiters' timeout is the polling interval).
A wake-up is only a hint that a claim is worth trying; polling stays as the safety net."""

from __future__ import annotations

import threading


class WorkSignal:
    """Wakes every thread waiting in ``wait``.

    Each thread remembers the last signal it saw, so a signal sent while it was busy (after a
    claim found nothing, before it started waiting) makes its next ``wait`` return at once
    instead of being lost. Several threads may wait at the same time (several runners in one
    process): each of them wakes."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._generation = 0
        self._seen = threading.local()

    def notify(self) -> None:
        with self._condition:
            self._generation += 1
            self._condition.notify_all()

    def wait(self, timeout: float) -> bool:
        """Wait until a signal this thread has not seen yet, at most ``timeout`` seconds.
        Returns whether a signal came."""
        with self._condition:
            seen: int = getattr(self._seen, "generation", 0)
            signalled = self._condition.wait_for(lambda: self._generation != seen, timeout)
            self._seen.generation = self._generation
            return signalled


class InProcessWakeUps:
    """``Store.notify_work`` and ``Store.wait_for_work`` within one process, for every dialect.
    A dialect with a channel between processes (PostgreSQL's NOTIFY) feeds the same signal."""

    def __init__(self) -> None:
        self._work_signal = WorkSignal()

    def notify_work(self) -> None:
        self._work_signal.notify()

    def wait_for_work(self, timeout: float) -> None:
        self._work_signal.wait(timeout)
