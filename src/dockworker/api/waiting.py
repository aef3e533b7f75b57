"""Waiting for a task to end without holding a thread: ``GET /tasks/{id}?wait=S`` and the followed
log. Each waiter is an asyncio event on the server's loop, set from the store's task-end
announcements (``Store.on_task_end``: this process's writes, and other processes' on PostgreSQL)
and when the server begins to stop. Announcements are hints: a waiter still reads the task again
every ``RECHECK_S`` (a runner in another process on SQLite, a NOTIFY lost while the database
connection was down)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Collection, Iterator
from dataclasses import dataclass

from ..store import Store

RECHECK_S = 1.0


@dataclass(eq=False)
class Waiter:
    """One request waiting for one task."""

    task_id: str
    loop: asyncio.AbstractEventLoop
    event: asyncio.Event

    def wake(self) -> None:
        with contextlib.suppress(RuntimeError):  # its loop has closed: nobody waits any more
            self.loop.call_soon_threadsafe(self.event.set)

    async def wait(self, timeout: float) -> None:
        """Until a wake-up (then cleared for the next wait) or ``timeout`` seconds."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.event.wait(), timeout)
        self.event.clear()


class TaskWaiters:
    """The waiters of one application, by task id."""

    def __init__(self, store: Store, stopping: threading.Event) -> None:
        self._store = store
        self._stopping = stopping
        self._lock = threading.Lock()
        self._waiters: dict[str, set[Waiter]] = {}
        self._subscribed = False

    @contextlib.contextmanager
    def watching(self, task_id: str) -> Iterator[Waiter]:
        """Register a waiter for the task. Read the task only after this: an end committed
        between that read and the wait still wakes it."""
        self._start()
        waiter = Waiter(task_id, asyncio.get_running_loop(), asyncio.Event())
        with self._lock:
            self._waiters.setdefault(task_id, set()).add(waiter)
        try:
            if self._stopping.is_set():
                waiter.event.set()
            yield waiter
        finally:
            with self._lock:
                found = self._waiters.get(task_id)
                if found is not None:
                    found.discard(waiter)
                    if not found:
                        del self._waiters[task_id]

    def _start(self) -> None:
        with self._lock:
            if self._subscribed:
                return
            self._subscribed = True
        self._store.on_task_end(self._ended)
        threading.Thread(target=self._wake_all_on_stop, name="api-waiters-stop", daemon=True).start()

    def _ended(self, task_ids: Collection[str] | None) -> None:
        """Called on the thread that wrote (or relayed) the end: cheap when nobody waits."""
        with self._lock:
            if task_ids is None:
                woken = [w for waiters in self._waiters.values() for w in waiters]
            else:
                woken = [w for task_id in task_ids for w in self._waiters.get(task_id, ())]
        for waiter in woken:
            waiter.wake()

    def _wake_all_on_stop(self) -> None:
        self._stopping.wait()
        self._ended(None)
