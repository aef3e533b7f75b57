"""Schedules: IronWorker's ``run_every``/``run_times``/``start_at``/``end_at``, plus cron with a
time zone. Each answer describes the cadence and lists the next runs."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from fastapi import APIRouter

from ..errors import ClientError
from ..models import Schedule, ScheduleSpec
from ..scheduler.timing import cadence_of, check_cron, zone
from ..settings import Settings
from .deps import PagingDep, ProjectDep, ServicesDep
from .schemas import ScheduleIn, SchedulesIn, schedule_json

router = APIRouter(tags=["schedules"])

MAX_EPOCH_S = 32503680000  # 3000-01-01T00:00:00Z: later moments (and their next runs) stay writable


def parse_moment(value: str | int | float | None, field: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, int | float):
        try:
            moment = float(value)
        except OverflowError:
            moment = math.inf
        if not (math.isfinite(moment) and 0 <= moment <= MAX_EPOCH_S):
            raise ClientError(f"{field} is out of range for epoch seconds")
        return moment
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise ClientError(f"{field}: {value!r} is not an RFC 3339 time") from exc
    if parsed.tzinfo is None:
        raise ClientError(f"{field}: {value!r} has no time zone offset")
    if not 0 <= parsed.timestamp() <= MAX_EPOCH_S:
        raise ClientError(f"{field}: {value!r} is out of range (1970 to 3000)")
    return parsed.timestamp()


def to_spec(item: ScheduleIn, where: str, settings: Settings) -> ScheduleSpec:
    if item.run_every is not None and item.cron is not None:
        raise ClientError(f"{where}: give either run_every or cron, not both")
    if item.run_every is not None and item.run_every < settings.min_run_every_s:
        raise ClientError(f"{where}.run_every must be at least {settings.min_run_every_s} seconds")
    if item.cron is not None:
        check_cron(item.cron)
    timezone = item.timezone or "UTC"
    zone(timezone)
    if item.timezone and not item.cron:
        raise ClientError(f"{where}.timezone applies to cron schedules only")
    start_at = parse_moment(item.start_at, f"{where}.start_at")
    end_at = parse_moment(item.end_at, f"{where}.end_at")
    if start_at is not None and end_at is not None and end_at < start_at:
        raise ClientError(f"{where}.end_at is before start_at")
    delay = item.task_delay if item.task_delay is not None else item.delay
    if delay is not None and delay > settings.limits.max_delay_s:
        raise ClientError(f"{where}.delay may be at most {settings.limits.max_delay_s} s")
    if item.timeout is not None and item.timeout > settings.limits.max_timeout_s:
        raise ClientError(f"{where}.timeout may be at most {settings.limits.max_timeout_s} s")
    if len((item.payload or "").encode()) > settings.max_payload_bytes:
        raise ClientError(f"{where}.payload is larger than {settings.max_payload_bytes} bytes")
    return ScheduleSpec(
        code_name=item.code_name,
        payload=item.payload or "",
        start_at=start_at,
        run_every=item.run_every,
        cron=item.cron,
        timezone=timezone,
        run_times=item.run_times,
        end_at=end_at,
        priority=item.priority or 0,
        timeout=item.timeout or None,
        delay=delay or 0,
        label=item.label,
        cluster=item.cluster or "default",
    )


def present(schedule: Schedule) -> dict[str, Any]:
    cadence = cadence_of(schedule, schedule.start_at)
    upcoming: list[float] = []
    if schedule.status == "scheduled" and schedule.next_start is not None:
        upcoming = [schedule.next_start, *cadence.upcoming(schedule.next_start, schedule.run_count + 1, 4)]
    return schedule_json(schedule, cadence.describe(), upcoming)


@router.post("/2/projects/{project_id}/schedules")
def create_schedules(svc: ServicesDep, project_id: ProjectDep, body: SchedulesIn) -> dict[str, Any]:
    specs = [to_spec(item, f"schedules[{i}]", svc.settings) for i, item in enumerate(body.schedules)]
    existing = len(svc.store.list_schedules(project_id, 0, svc.settings.max_schedules_per_project + 1))
    if existing + len(specs) > svc.settings.max_schedules_per_project:
        raise ClientError(f"a project may have at most {svc.settings.max_schedules_per_project} schedules")
    created = svc.store.create_schedules(project_id, specs, cadence_of)
    return {"msg": "Scheduled", "schedules": [present(s) for s in created]}


@router.get("/2/projects/{project_id}/schedules")
def list_schedules(svc: ServicesDep, project_id: ProjectDep, paging: PagingDep) -> dict[str, Any]:
    page, per_page = paging
    return {"schedules": [present(s) for s in svc.store.list_schedules(project_id, page, per_page)]}


@router.get("/2/projects/{project_id}/schedules/{schedule_id}")
def get_schedule(svc: ServicesDep, project_id: ProjectDep, schedule_id: str) -> dict[str, Any]:
    return present(svc.store.get_schedule(project_id, schedule_id))


@router.put("/2/projects/{project_id}/schedules/{schedule_id}")
def update_schedule(
    svc: ServicesDep, project_id: ProjectDep, schedule_id: str, body: ScheduleIn
) -> dict[str, Any]:
    updated = svc.store.update_schedule(
        project_id, schedule_id, to_spec(body, "schedule", svc.settings), cadence_of
    )
    return {**present(updated), "msg": "Updated"}


@router.post("/2/projects/{project_id}/schedules/{schedule_id}/cancel")
def cancel_schedule(svc: ServicesDep, project_id: ProjectDep, schedule_id: str) -> dict[str, Any]:
    cancelled = svc.store.cancel_schedule(project_id, schedule_id)
    return {"msg": "Cancelled", "status": cancelled.status}
