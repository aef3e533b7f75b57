"""Reclaims tasks whose runner stopped renewing its lease: they go back to the queue as an
infrastructure failure (or end per the retry budget), exactly once, whichever process does it."""

from __future__ import annotations

import logging
import threading

from ..logsetup import Throttled
from ..settings import Settings
from ..store import Store

log = logging.getLogger("dockworker.scheduler")


class Housekeeper:
    def __init__(self, settings: Settings, store: Store, interval_s: float = 1.0) -> None:
        self.settings = settings
        self.store = store
        self.interval_s = interval_s
        self._throttled = Throttled(log)

    def tick(self) -> int:
        expired = self.store.expire_leases(
            self.settings.infra_retry_budget,
            self.settings.infra_retry_base_delay_s,
            self.settings.infra_retry_max_delay_s,
        )
        for task in expired:
            log.warning(
                "lease.expired",
                extra={"task_id": task.id, "status": str(task.status), "reason": task.msg or ""},
            )
        return len(expired)

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(self.interval_s):
            try:
                self.tick()
            except Exception as exc:
                # A store that keeps failing (disk full...) is said once per interval, not per tick.
                self._throttled(logging.ERROR, "housekeeping.failed", {"error": str(exc)}, exc_info=True)
            else:
                self._throttled.reset("housekeeping.failed")
