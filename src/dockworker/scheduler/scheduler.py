"""Fires due schedules. Any number of schedulers may run against one store: each slot is
claimed by a unique (schedule, slot) row and a conditional update, so it fires once."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from ..logsetup import Throttled
from ..settings import Settings
from ..store import Store
from .timing import cadence_of

log = logging.getLogger("dockworker.scheduler")


class Scheduler:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        *,
        clock: Callable[[], float] = time.time,
        on_fire: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock
        self.on_fire = on_fire or (lambda: None)
        self._throttled = Throttled(log)

    def tick(self) -> list[str]:
        """Fire every schedule due now; returns the ids of the tasks queued."""
        now = self.clock()
        queued = []
        for schedule_id in self.store.due_schedule_ids(now):
            task_id = self.store.fire_schedule(
                schedule_id, now, self.settings.limits.max_timeout_s, cadence_of
            )
            if task_id is not None:
                log.info("schedule.fired", extra={"schedule_id": schedule_id, "task_id": task_id})
                queued.append(task_id)
        if queued:
            self.on_fire()
        return queued

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(self.settings.scheduler_interval_s):
            try:
                self.tick()
            except Exception as exc:
                self._throttled(logging.ERROR, "scheduler.tick_failed", {"error": str(exc)}, exc_info=True)
            else:
                self._throttled.reset("scheduler.tick_failed")
