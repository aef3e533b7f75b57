"""When a schedule fires: every N seconds from ``start_at``, or a cron expression evaluated in
an IANA time zone (daylight-saving changes as Debian's cron handles them)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from ..errors import ClientError
from ..models import Schedule, ScheduleSpec


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ClientError(f"unknown time zone {name!r} (use an IANA name such as 'Europe/Paris')") from exc


def check_cron(expression: str) -> None:
    try:
        CronSim(expression, datetime.now(UTC))
    except CronSimError as exc:
        raise ClientError(f"invalid cron expression {expression!r}: {exc}") from exc


@dataclass(frozen=True, kw_only=True)
class Cadence:
    start_at: float
    run_every: int | None = None
    cron: str | None = None
    timezone: str = "UTC"
    run_times: int | None = None
    end_at: float | None = None

    def slots_after(self, moment: float) -> Iterator[float]:
        """Slots strictly after ``moment`` (epoch seconds), ignoring run_times and end_at."""
        if self.cron:
            tz = zone(self.timezone)
            begin = max(moment, self.start_at - 1e-6)
            start = datetime.fromtimestamp(begin, tz)
            for fire in CronSim(self.cron, start):
                stamp = fire.timestamp()
                if stamp > moment and stamp >= self.start_at:
                    yield stamp
            return
        if self.run_every is None:
            if self.start_at > moment:
                yield self.start_at
            return
        elapsed = moment - self.start_at
        index = 0 if elapsed < 0 else math.floor(elapsed / self.run_every) + 1
        for k in itertools.count(index):
            yield self.start_at + k * self.run_every

    def next_slot(self, after: float, fired: int = 0) -> float | None:
        """The first slot after ``after`` that the limits still allow, or None when done."""
        if self.run_times is not None and fired >= self.run_times:
            return None
        for slot in self.slots_after(after):
            if self.end_at is not None and slot > self.end_at:
                return None
            return slot
        return None

    def latest_due(self, first_due: float, now: float) -> float:
        """Of the slots from ``first_due`` up to ``now``, the latest: after downtime a schedule
        fires once for the missed slots, not once per slot."""
        latest = first_due
        for slot in self.slots_after(first_due):
            if slot > now or (self.end_at is not None and slot > self.end_at):
                break
            latest = slot
        return latest

    def upcoming(self, after: float, fired: int, count: int = 5) -> list[float]:
        found: list[float] = []
        moment = after
        while len(found) < count:
            slot = self.next_slot(moment, fired + len(found))
            if slot is None:
                break
            found.append(slot)
            moment = slot
        return found

    def describe(self) -> str:
        if self.cron:
            text = CronSim(self.cron, datetime.now(UTC)).explain()
            return f"{text} ({self.timezone})"
        if self.run_every is None:
            return "once"
        return f"every {_duration(self.run_every)}"


def cadence_of(schedule: Schedule | ScheduleSpec, start_at: float) -> Cadence:
    return Cadence(
        start_at=start_at,
        run_every=schedule.run_every,
        cron=schedule.cron,
        timezone=schedule.timezone,
        run_times=schedule.run_times,
        end_at=schedule.end_at,
    )


def _duration(seconds: int) -> str:
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds % size == 0:
            count = seconds // size
            return f"{count} {unit}" + ("s" if count != 1 else "")
    return f"{seconds} seconds"
