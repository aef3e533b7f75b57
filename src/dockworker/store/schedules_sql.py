"""Schedules: stored specs, and firing their due slots exactly once however many schedulers run."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from .. import ids, timeutil
from ..errors import ClientError, NotFound
from ..models import NewTask, Schedule, ScheduleSpec
from ..states import CANCELLED_MSG
from .base import CadenceOf
from .clusters_sql import check_clusters
from .schema import codes, schedule_fires, schedules
from .task_rows import insert_tasks
from .transactions import Transactional

SCHEDULED, COMPLETE, CANCELLED = "scheduled", "complete", "cancelled"


class _LostRace(Exception):
    """Another scheduler fired this slot first."""


class ScheduleQueries(Transactional):
    """When a schedule's slots fall is the scheduler's knowledge (``scheduler.timing``): the
    methods that compute a slot take its ``cadence_of``."""

    def _schedule_values(self, spec: ScheduleSpec, now: float, cadence_of: CadenceOf) -> dict[str, Any]:
        start_at = spec.start_at if spec.start_at is not None else now
        next_start = cadence_of(spec, start_at).next_slot(start_at - 0.001, 0)
        return dict(
            code_name=spec.code_name,
            payload=spec.payload,
            start_at=start_at,
            run_every=spec.run_every,
            cron=spec.cron,
            timezone=spec.timezone,
            run_times=spec.run_times,
            end_at=spec.end_at,
            priority=spec.priority,
            timeout=spec.timeout,
            delay=spec.delay,
            label=spec.label,
            cluster=spec.cluster,
            status=SCHEDULED if next_start is not None else COMPLETE,
            msg=None if next_start is not None else "no run left before end_at",
            next_start=next_start,
            updated_at=now,
        )

    def _require_code(self, conn: Connection, project_id: str, code_name: str, where: str) -> None:
        found = conn.execute(
            sa.select(codes.c.id).where(codes.c.project_id == project_id, codes.c.name == code_name)
        ).first()
        if found is None:
            raise NotFound(f"{where}: code package {code_name!r} not found")

    def create_schedules(
        self, project_id: str, specs: Sequence[ScheduleSpec], cadence_of: CadenceOf
    ) -> list[Schedule]:
        now = timeutil.now()
        new_ids: list[str] = []
        with self._write() as conn:
            payloads: dict[str, list[str]] = {}
            for index, spec in enumerate(specs):
                self._require_code(conn, project_id, spec.code_name, f"schedules[{index}]")
                payloads.setdefault(spec.cluster, []).append(spec.payload)
            check_clusters(conn, project_id, payloads)
            for spec in specs:
                schedule_id = ids.new_id()
                conn.execute(
                    schedules.insert().values(
                        id=schedule_id,
                        project_id=project_id,
                        run_count=0,
                        created_at=now,
                        **self._schedule_values(spec, now, cadence_of),
                    )
                )
                new_ids.append(schedule_id)
            return [self._schedule(conn, project_id, i) for i in new_ids]

    def _schedule(self, conn: Connection, project_id: str, schedule_id: str) -> Schedule:
        row = conn.execute(
            schedules.select().where(schedules.c.id == schedule_id, schedules.c.project_id == project_id)
        ).first()
        if row is None:
            raise NotFound("Schedule not found")
        return Schedule.from_row(row)

    def get_schedule(self, project_id: str, schedule_id: str) -> Schedule:
        with self._read() as conn:
            return self._schedule(conn, project_id, schedule_id)

    def list_schedules(self, project_id: str, page: int, per_page: int) -> list[Schedule]:
        with self._read() as conn:
            rows = conn.execute(
                schedules.select()
                .where(schedules.c.project_id == project_id)
                .order_by(schedules.c.created_at.desc(), schedules.c.id.desc())
                .limit(per_page)
                .offset(page * per_page)
            ).all()
        return [Schedule.from_row(r) for r in rows]

    def update_schedule(
        self, project_id: str, schedule_id: str, spec: ScheduleSpec, cadence_of: CadenceOf
    ) -> Schedule:
        """Replace a schedule's spec; its run count is kept, its next slot recomputed."""
        now = timeutil.now()
        with self._write() as conn:
            current = self._schedule(conn, project_id, schedule_id)
            if current.status == CANCELLED:
                raise ClientError("the schedule is cancelled")
            self._require_code(conn, project_id, spec.code_name, "schedule")
            check_clusters(conn, project_id, {spec.cluster: [spec.payload]})
            values = self._schedule_values(spec, now, cadence_of)
            cadence = cadence_of(spec, values["start_at"])
            values["next_start"] = cadence.next_slot(max(now, values["start_at"]) - 0.001, current.run_count)
            if values["next_start"] is None:
                values.update(status=COMPLETE, msg="no run left")
            conn.execute(schedules.update().where(schedules.c.id == schedule_id).values(**values))
            return self._schedule(conn, project_id, schedule_id)

    def cancel_schedule(self, project_id: str, schedule_id: str) -> Schedule:
        now = timeutil.now()
        with self._write() as conn:
            current = self._schedule(conn, project_id, schedule_id)
            if current.status == CANCELLED:
                raise ClientError("the schedule is already cancelled")
            conn.execute(
                schedules.update()
                .where(schedules.c.id == schedule_id)
                .values(status=CANCELLED, msg=CANCELLED_MSG, next_start=None, updated_at=now)
            )
            return self._schedule(conn, project_id, schedule_id)

    def due_schedule_ids(self, now: float, limit: int = 100) -> list[str]:
        with self._read() as conn:
            rows = conn.execute(
                sa.select(schedules.c.id)
                .where(schedules.c.status == SCHEDULED, schedules.c.next_start <= now)
                .order_by(schedules.c.next_start)
                .limit(limit)
            ).all()
        return [r.id for r in rows]

    def fire_schedule(
        self, schedule_id: str, now: float, max_timeout: int, cadence_of: CadenceOf
    ) -> str | None:
        """Queue the task of a due schedule's slot. After downtime, the missed slots fire once.
        Returns the task id, or None when there was nothing to do or another scheduler won."""
        try:
            with self._write() as conn:
                return self._fire(conn, schedule_id, now, max_timeout, cadence_of)
        except (_LostRace, IntegrityError):
            return None

    def _fire(
        self, conn: Connection, schedule_id: str, now: float, max_timeout: int, cadence_of: CadenceOf
    ) -> str | None:
        row = conn.execute(schedules.select().where(schedules.c.id == schedule_id)).first()
        if row is None:
            return None
        schedule = Schedule.from_row(row)
        if schedule.status != SCHEDULED or schedule.next_start is None or schedule.next_start > now:
            return None
        cadence = cadence_of(schedule, schedule.start_at)
        slot = cadence.latest_due(schedule.next_start, now)
        fired = schedule.run_count + 1
        following = cadence.next_slot(max(slot, now), fired)
        values: dict[str, Any] = dict(next_start=following, updated_at=now)
        task_id: str | None = None
        try:
            new = NewTask(
                code_name=schedule.code_name,
                payload=schedule.payload,
                priority=schedule.priority,
                timeout=schedule.timeout,
                delay=schedule.delay,
                label=schedule.label,
                cluster=schedule.cluster,
                schedule_id=schedule.id,
            )
            (task,) = insert_tasks(conn, schedule.project_id, [new], max_timeout)
            task_id = task.id
            conn.execute(
                schedule_fires.insert().values(
                    schedule_id=schedule.id, slot=slot, task_id=task_id, fired_at=now
                )
            )
            values.update(run_count=fired, last_run_time=now, msg=None)
        except (NotFound, ClientError) as exc:
            values.update(msg=f"could not queue the slot at {timeutil.rfc3339(slot)}: {exc.message}")
        if following is None:
            values.update(status=COMPLETE, msg=values.get("msg") or "ran its last slot")
        won = conn.execute(
            schedules.update()
            .where(schedules.c.id == schedule.id, schedules.c.next_start == schedule.next_start)
            .values(**values)
        ).rowcount
        if not won:
            raise _LostRace
        return task_id
