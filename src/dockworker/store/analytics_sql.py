"""What the HUD and ``/metrics`` read and write beyond the API's own queries: per-package counts,
time series, monthly usage, the store-wide metrics snapshot, the session-signing secret and ended
sessions (both in ``meta``), schedules by status, and a package's config edited in a new revision
that reuses the archive.

Counts and series read through indexes: active tasks by ``ix_tasks_code_status``, a project's
recent tasks by ``ix_tasks_project_listing``; /metrics counts outcomes over
``ix_tasks_code_status``, and each scrape's events are a range of ``task_events``' primary key."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from .. import ids, timeutil
from ..errors import NotFound
from ..models import Schedule, SeriesPoint, StatusCount, TaskFact, UsageDay
from ..states import ACTIVE, TERMINAL, TaskStatus
from .schema import code_revisions, codes, meta, schedules, task_events, tasks
from .transactions import Transactional

HUD_SECRET_KEY = "hud_session_secret"
_ENDED_PREFIX = "hud_ended:"
# Failures in the analytics: the task ran and did not succeed.
FAILED = frozenset({TaskStatus.ERROR, TaskStatus.TIMEOUT, TaskStatus.KILLED})

_ACTIVE = sorted(s.value for s in ACTIVE | {TaskStatus.QUEUED})
_TERMINAL = sorted(s.value for s in TERMINAL)
_FAILED = sorted(s.value for s in FAILED)


def _bucket(column: Any, size: int, dialect: str) -> Any:
    """The start of the ``size``-second bucket of an epoch-seconds column (UTC)."""
    if dialect == "postgresql":
        return sa.cast(sa.func.floor(column / size), sa.BigInteger) * size
    # SQLite's CAST truncates toward zero, which is the floor for times after 1970.
    return sa.cast(column / size, sa.Integer) * size


class AnalyticsQueries(Transactional):
    # --- the HUD's sessions -------------------------------------------------------------------

    def hud_secret(self) -> str:
        """The key that signs HUD session cookies, made once per database so that every API
        server accepts the sessions of the others. Deleting it ends every session."""
        for _ in range(2):
            with self._read() as conn:
                found = conn.execute(sa.select(meta.c.value).where(meta.c.key == HUD_SECRET_KEY)).scalar()
            if found is not None:
                return str(found)
            try:
                with self._write() as conn:
                    conn.execute(meta.insert().values(key=HUD_SECRET_KEY, value=secrets.token_hex(32)))
            except IntegrityError:
                pass  # another API server made it first: read theirs
        raise RuntimeError("the HUD secret could not be stored")

    @staticmethod
    def _ended_key(session_id: str, expires_at: float) -> str:
        # The expiry leads the key so that ended sessions past it are purged by a range.
        return f"{_ENDED_PREFIX}{int(expires_at):012d}:{session_id}"

    def end_hud_session(self, session_id: str, expires_at: float) -> None:
        """Record a logged-out session until it would have expired anyway."""
        key = self._ended_key(session_id, expires_at)
        now = timeutil.now()
        with self._write() as conn:
            conn.execute(
                meta.delete().where(
                    meta.c.key >= _ENDED_PREFIX, meta.c.key < self._ended_key("", now), meta.c.key != key
                )
            )
            if conn.execute(sa.select(meta.c.key).where(meta.c.key == key)).first() is None:
                conn.execute(meta.insert().values(key=key, value=timeutil.rfc3339(now)))

    def hud_session_ended(self, session_id: str, expires_at: float) -> bool:
        key = self._ended_key(session_id, expires_at)
        with self._read() as conn:
            return conn.execute(sa.select(meta.c.key).where(meta.c.key == key)).first() is not None

    # --- code packages ------------------------------------------------------------------------

    def update_code_config(self, project_id: str, code_id: str, config: str | None) -> int:
        """A new revision of the package with this config and everything else of the latest one,
        the archive included (copied by the database, not through this process). Returns the new
        revision number."""
        now = timeutil.now()
        with self._write() as conn:
            code = conn.execute(
                codes.select()
                .where(codes.c.id == code_id, codes.c.project_id == project_id)
                .with_for_update()
            ).first()
            if code is None:
                raise NotFound("Code package not found")
            latest = conn.execute(
                sa.select(code_revisions.c.spec, code_revisions.c.checksum, code_revisions.c.code_size).where(
                    code_revisions.c.id == code.latest_revision_id
                )
            ).one()
            revision_id, rev = ids.new_id(), code.rev + 1
            conn.execute(
                code_revisions.insert().values(
                    id=revision_id,
                    code_id=code_id,
                    project_id=project_id,
                    rev=rev,
                    spec={**latest.spec, "config": config},
                    checksum=latest.checksum,
                    code_size=latest.code_size,
                    archive=None,
                    created_at=now,
                )
            )
            previous_archive = (
                sa.select(code_revisions.c.archive)
                .where(code_revisions.c.id == code.latest_revision_id)
                .scalar_subquery()
            )
            conn.execute(
                code_revisions.update()
                .where(code_revisions.c.id == revision_id)
                .values(archive=previous_archive)
            )
            conn.execute(
                codes.update()
                .where(codes.c.id == code_id)
                .values(rev=rev, latest_revision_id=revision_id, updated_at=now)
            )
            return int(rev)

    def package_counts(
        self, project_id: str, code_ids: Sequence[str], since: float
    ) -> dict[str, dict[str, int]]:
        """Per package: its tasks queued, preparing and running now, and its tasks created since
        ``since`` that ended, per terminal status."""
        counts: dict[str, dict[str, int]] = {code_id: dict.fromkeys(TaskStatus, 0) for code_id in code_ids}
        if not code_ids:
            return counts
        with self._read() as conn:
            active = conn.execute(
                sa.select(tasks.c.code_id, tasks.c.status, sa.func.count())
                .where(tasks.c.code_id.in_(list(code_ids)), tasks.c.status.in_(_ACTIVE))
                .group_by(tasks.c.code_id, tasks.c.status)
            ).all()
            # coalesce() of NOT NULL columns changes no value; it keeps SQLite's planner from
            # reading the whole (code_id, status) index for this GROUP BY: the creation-time
            # range of ix_tasks_project_listing is the narrow one.
            code_id, status = sa.func.coalesce(tasks.c.code_id, ""), sa.func.coalesce(tasks.c.status, "")
            ended = conn.execute(
                sa.select(code_id, status, sa.func.count())
                .where(tasks.c.project_id == project_id, tasks.c.created_at >= since, status.in_(_TERMINAL))
                .group_by(code_id, status)
            ).all()
        for found_code, found_status, count in [*active, *ended]:
            if found_code in counts:
                counts[found_code][TaskStatus(found_status)] = int(count)
        return counts

    # --- analytics ----------------------------------------------------------------------------

    def task_series(self, project_id: str, since: float, bucket_s: int, by: str) -> list[SeriesPoint]:
        """Tasks created since ``since``, per ``bucket_s`` seconds and per ``by`` ("cluster" or
        "code"): how many, how many failed, the total time their containers ran and the CPU
        time they used."""
        group = tasks.c.cluster if by == "cluster" else tasks.c.code_name
        bucket = _bucket(tasks.c.created_at, bucket_s, self.engine.dialect.name).label("bucket")
        ran = sa.and_(tasks.c.start_time.is_not(None), tasks.c.end_time.is_not(None))
        query = (
            sa.select(
                group.label("grp"),
                bucket,
                sa.func.count().label("n"),
                sa.func.sum(sa.case((tasks.c.status.in_(_FAILED), 1), else_=0)).label("failed"),
                sa.func.sum(sa.case((ran, tasks.c.end_time - tasks.c.start_time), else_=0.0)).label("dur"),
                sa.func.sum(tasks.c.cpu_time_ms).label("cpu_ms"),
            )
            .where(tasks.c.project_id == project_id, tasks.c.created_at >= since)
            .group_by(group, bucket)
            .order_by(group, bucket)
        )
        with self._read() as conn:
            rows = conn.execute(query).all()
        return [
            SeriesPoint(
                group=str(r.grp),
                bucket=int(r.bucket),
                tasks=int(r.n),
                failed=int(r.failed or 0),
                duration_s=float(r.dur or 0.0),
                cpu_s=int(r.cpu_ms or 0) / 1000,
            )
            for r in rows
        ]

    def usage_days(self, project_id: str, since: float) -> list[UsageDay]:
        """Per UTC day (of creation), cluster and priority: tasks that ran, their compute
        seconds (the time their containers ran), their CPU time and the largest memory peak of
        one of them (from the usage runners recorded; tasks without it count for nothing)."""
        day = _bucket(tasks.c.created_at, 86400, self.engine.dialect.name).label("day")
        ran = sa.and_(tasks.c.start_time.is_not(None), tasks.c.end_time.is_not(None))
        query = (
            sa.select(
                day,
                tasks.c.cluster,
                tasks.c.priority,
                sa.func.count().label("n"),
                sa.func.sum(sa.case((ran, tasks.c.end_time - tasks.c.start_time), else_=0.0)).label("dur"),
                sa.func.sum(tasks.c.cpu_time_ms).label("cpu_ms"),
                sa.func.max(tasks.c.peak_memory_bytes).label("peak"),
            )
            .where(
                tasks.c.project_id == project_id,
                tasks.c.created_at >= since,
                tasks.c.start_time.is_not(None),
            )
            .group_by(day, tasks.c.cluster, tasks.c.priority)
            .order_by(day)
        )
        with self._read() as conn:
            rows = conn.execute(query).all()
        return [
            UsageDay(
                day=int(r.day),
                cluster=str(r.cluster),
                priority=int(r.priority),
                tasks_run=int(r.n),
                compute_s=float(r.dur or 0.0),
                cpu_s=int(r.cpu_ms or 0) / 1000,
                peak_memory_bytes=None if r.peak is None else int(r.peak),
            )
            for r in rows
        ]

    # --- /metrics -----------------------------------------------------------------------------

    def outcome_counts(self) -> list[StatusCount]:
        """Every task ever ended, per package and terminal status: a count over the narrow
        (code_id, status) index, packages named from ``codes`` (or, once deleted, from one of
        their tasks)."""
        with self._read() as conn:
            rows = conn.execute(
                sa.select(tasks.c.code_id, tasks.c.status, sa.func.count())
                .where(tasks.c.status.in_(_TERMINAL))
                .group_by(tasks.c.code_id, tasks.c.status)
            ).all()
            names = {
                r.id: (str(r.project_id), str(r.name))
                for r in conn.execute(sa.select(codes.c.id, codes.c.project_id, codes.c.name)).all()
            }
            for code_id in {r[0] for r in rows} - names.keys():
                found = conn.execute(
                    sa.select(tasks.c.project_id, tasks.c.code_name)
                    .where(tasks.c.code_id == code_id)
                    .limit(1)
                ).one()
                names[code_id] = (str(found.project_id), str(found.code_name))
        return [
            StatusCount(
                project_id=names[code_id][0], code_name=names[code_id][1], status=str(status), count=int(n)
            )
            for code_id, status, n in rows
        ]

    def active_counts(self) -> list[StatusCount]:
        """Tasks queued, preparing or running now, per package, status and priority (through
        the status index: the cost follows the backlog, not the history)."""
        now = timeutil.now()
        due = sa.and_(tasks.c.status == TaskStatus.QUEUED.value, tasks.c.run_at <= now)
        # Grouped on expressions, so that SQLite's planner reads the active tasks by status and
        # does not walk the whole (project_id, created_at) index for the GROUP BY's order.
        keys = tuple(
            sa.func.coalesce(column, default)
            for column, default in (
                (tasks.c.project_id, ""),
                (tasks.c.code_name, ""),
                (tasks.c.status, ""),
                (tasks.c.priority, 0),
            )
        )
        with self._read() as conn:
            rows = conn.execute(
                sa.select(*keys, sa.func.count(), sa.func.min(sa.case((due, tasks.c.run_at), else_=None)))
                .where(tasks.c.status.in_(_ACTIVE))
                .group_by(*keys)
            ).all()
        return [
            StatusCount(
                project_id=str(r[0]),
                code_name=str(r[1]),
                status=str(r[2]),
                priority=int(r[3]),
                count=int(r[4]),
                oldest_runnable=None if r[5] is None else float(r[5]),
            )
            for r in rows
        ]

    def last_event_id(self) -> int:
        with self._read() as conn:
            return int(
                conn.execute(sa.select(sa.func.coalesce(sa.func.max(task_events.c.id), 0))).scalar_one()
            )

    def task_facts_since(self, after_id: int, kinds: Sequence[str], limit: int = 50_000) -> list[TaskFact]:
        """Events of these kinds with an id above ``after_id`` (a range of the primary key), each
        with its task's package, priority and times, oldest first."""
        query = (
            sa.select(
                task_events.c.id,
                task_events.c.kind,
                tasks.c.project_id,
                tasks.c.code_name,
                tasks.c.priority,
                tasks.c.run_at,
                tasks.c.start_time,
                tasks.c.end_time,
                tasks.c.cpu_time_ms,
            )
            .join(tasks, tasks.c.id == task_events.c.task_id)
            .where(task_events.c.id > after_id, task_events.c.kind.in_(list(kinds)))
            .order_by(task_events.c.id)
            .limit(limit)
        )
        with self._read() as conn:
            rows = conn.execute(query).all()
        return [
            TaskFact(
                event_id=int(r.id),
                kind=str(r.kind),
                project_id=str(r.project_id),
                code_name=str(r.code_name),
                priority=int(r.priority),
                run_at=float(r.run_at),
                start_time=None if r.start_time is None else float(r.start_time),
                end_time=None if r.end_time is None else float(r.end_time),
                cpu_time_ms=None if r.cpu_time_ms is None else int(r.cpu_time_ms),
            )
            for r in rows
        ]

    # --- schedules ----------------------------------------------------------------------------

    def list_schedules_by_status(
        self, project_id: str, statuses: Sequence[str], page: int, per_page: int
    ) -> list[Schedule]:
        with self._read() as conn:
            rows = conn.execute(
                schedules.select()
                .where(schedules.c.project_id == project_id, schedules.c.status.in_(list(statuses)))
                .order_by(schedules.c.created_at.desc(), schedules.c.id.desc())
                .limit(per_page)
                .offset(page * per_page)
            ).all()
        return [Schedule.from_row(r) for r in rows]
