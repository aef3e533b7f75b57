"""Wake-ups: how a runner waiting for work learns that work may have arrived, and how a client
waiting for a task learns that it ended.

Within one process a ``WorkSignal`` (and ``TaskEnds``) is enough. Across processes each dialect
has its own means (PostgreSQL: LISTEN/NOTIFY; SQLite: none, so the waiters' timeout is the
polling interval). A wake-up is only a hint; polling stays as the safety net."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..models import Task

log = logging.getLogger("dockworker.store")

# Told the ids of tasks that reached a terminal state, or None: any task may have (a bulk cancel).
EndListener = Callable[[Collection[str] | None], None]
# The tasks whose end this process wrote lately, as the end left them (TaskEnds.final).
FINAL_KEPT = 256


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


class TaskEnds:
    """Tells its listeners which tasks reached a terminal state. Listeners are called on the
    thread that committed the change (or the thread relaying another process's), so they must
    return at once. It also keeps, for a while, the tasks as the ends written by this process
    left them (:meth:`final`): a waiter woken by one answers with it, without reading the task
    again."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._listeners: list[EndListener] = []
        self._final: OrderedDict[str, Task] = OrderedDict()

    def subscribe(self, listener: EndListener) -> Callable[[], None]:
        with self._lock:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return unsubscribe

    def announce(self, task_ids: Collection[str] | None, final: Collection[Task] = ()) -> None:
        """``final``: some of the ended tasks as the committed change left them."""
        with self._lock:
            for task in final:
                self._final[task.id] = task
                self._final.move_to_end(task.id)
            while len(self._final) > FINAL_KEPT:
                self._final.popitem(last=False)
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(task_ids)
            except Exception:  # one listener's bug must not fail the write that announced
                log.exception("store.task_end_listener_failed")

    def final(self, task_id: str) -> Task | None:
        """The task as an end written by this process left it, if that was lately (a terminal
        task does not change state again; None: not known here)."""
        with self._lock:
            return self._final.get(task_id)


class InProcessWakeUps:
    """``Store.notify_work`` and ``Store.wait_for_work`` within one process, for every dialect,
    and ``Store.on_task_end``. A dialect with a channel between processes (PostgreSQL's NOTIFY)
    feeds the same signals."""

    def __init__(self) -> None:
        self._work_signal = WorkSignal()
        self._task_ends = TaskEnds()

    def on_task_end(self, listener: EndListener) -> Callable[[], None]:
        return self._task_ends.subscribe(listener)

    def ended_task(self, task_id: str) -> Task | None:
        return self._task_ends.final(task_id)

    def notify_work(self) -> None:
        self._work_signal.notify()

    def wait_for_work(self, timeout: float) -> None:
        self._work_signal.wait(timeout)
