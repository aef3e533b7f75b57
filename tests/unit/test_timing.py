"""Schedule math: run_every slots, cron in a time zone across daylight-saving changes,
bounded catch-up."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from dockworker.errors import ClientError
from dockworker.scheduler.timing import Cadence, check_cron, zone

RIGA = ZoneInfo("Europe/Riga")
NEW_YORK = ZoneInfo("America/New_York")


def at(tz: ZoneInfo, year: int, month: int, day: int, hour: int, minute: int) -> float:
    return datetime(year, month, day, hour, minute, tzinfo=tz).timestamp()


def local(tz: ZoneInfo, moment: float) -> str:
    return datetime.fromtimestamp(moment, tz).isoformat()


def test_run_every_slots() -> None:
    cadence = Cadence(start_at=1000.0, run_every=60)
    assert cadence.next_slot(0) == 1000.0
    assert cadence.next_slot(999.9) == 1000.0
    assert cadence.next_slot(1000.0) == 1060.0
    assert cadence.upcoming(1000.0, fired=1, count=3) == [1060.0, 1120.0, 1180.0]


def test_run_times_and_end_at_end_a_schedule() -> None:
    assert Cadence(start_at=0.0, run_every=60, run_times=2).next_slot(60.0, fired=2) is None
    assert Cadence(start_at=0.0, run_every=60, end_at=100.0).next_slot(60.0, fired=1) is None
    assert Cadence(start_at=0.0, run_every=60, end_at=120.0).next_slot(60.0, fired=1) == 120.0


def test_one_shot_schedule() -> None:
    cadence = Cadence(start_at=500.0)
    assert cadence.next_slot(0.0) == 500.0
    assert cadence.next_slot(500.0, fired=1) is None
    assert cadence.describe() == "once"


def test_missed_slots_collapse_into_the_latest() -> None:
    cadence = Cadence(start_at=0.0, run_every=60)
    assert cadence.latest_due(60.0, now=1000.0) == 960.0
    assert cadence.latest_due(60.0, now=60.0) == 60.0
    assert Cadence(start_at=0.0, run_every=60, end_at=300.0).latest_due(60.0, now=1000.0) == 300.0


def test_cron_across_spring_forward() -> None:
    # Europe/Riga skips 03:00-04:00 on 2026-03-29: the 03:30 run happens at 04:00, once.
    cadence = Cadence(start_at=0.0, cron="30 3 * * *", timezone="Europe/Riga")
    runs = cadence.upcoming(at(RIGA, 2026, 3, 28, 12, 0), fired=0, count=3)
    assert [local(RIGA, r) for r in runs] == [
        "2026-03-29T04:00:00+03:00",
        "2026-03-30T03:30:00+03:00",
        "2026-03-31T03:30:00+03:00",
    ]


def test_cron_across_fall_back_runs_once() -> None:
    # New York repeats 01:00-02:00 on 2026-11-01: a 01:30 job runs once that day.
    cadence = Cadence(start_at=0.0, cron="30 1 * * *", timezone="America/New_York")
    runs = cadence.upcoming(at(NEW_YORK, 2026, 10, 31, 12, 0), fired=0, count=3)
    assert [local(NEW_YORK, r) for r in runs] == [
        "2026-11-01T01:30:00-04:00",
        "2026-11-02T01:30:00-05:00",
        "2026-11-03T01:30:00-05:00",
    ]
    assert runs[1] - runs[0] == 25 * 3600


def test_cron_respects_start_at() -> None:
    start = at(RIGA, 2026, 6, 1, 0, 0)
    cadence = Cadence(start_at=start, cron="0 12 * * *", timezone="Europe/Riga")
    assert local(RIGA, cadence.next_slot(0.0) or 0) == "2026-06-01T12:00:00+03:00"


def test_descriptions() -> None:
    assert Cadence(start_at=0, run_every=3600).describe() == "every 1 hour"
    assert Cadence(start_at=0, run_every=90).describe() == "every 90 seconds"
    cron = Cadence(start_at=0, cron="0 */6 * * MON-FRI", timezone="Europe/Riga").describe()
    assert cron == "At minute 0 past every sixth hour on Monday through Friday (Europe/Riga)"


def test_bad_cron_and_zone() -> None:
    with pytest.raises(ClientError, match="invalid cron"):
        check_cron("61 * * * *")
    with pytest.raises(ClientError, match="unknown time zone"):
        zone("Mars/Olympus")
