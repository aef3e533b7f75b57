"""Code packages and their revisions; pausing a package's queue and cancelling it."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from .. import ids, timeutil
from ..errors import NotFound
from ..models import Code, CodeRevision, CodeSpec
from ..states import CANCELLED_MSG, EventKind, TaskStatus
from .schema import code_revisions, codes, task_events, tasks
from .transactions import Transactional
from .transitions import is_active, is_queued, transition

_REVISION_COLUMNS = [c for c in code_revisions.c if c.name != "archive"]


def _spec_to_json(spec: CodeSpec) -> dict[str, Any]:
    return {name: getattr(spec, name) for name in CodeSpec.__slots__}


def revision_from_row(row: Any) -> CodeRevision:
    return CodeRevision(
        id=row.id,
        code_id=row.code_id,
        project_id=row.project_id,
        rev=row.rev,
        spec=CodeSpec(**row.spec),
        checksum=row.checksum,
        code_size=row.code_size,
        created_at=row.created_at,
    )


def queued_of(code_id: str) -> sa.ColumnElement[bool]:
    return sa.and_(tasks.c.code_id == code_id, is_queued())


def cancelled_values(msg: str, now: float) -> dict[str, Any]:
    return dict(msg=msg, end_time=now, updated_at=now)


def cancelled_events(cancelled: sa.FromClause, now: float, detail: str) -> sa.Insert:
    """The ``cancelled`` events of the tasks whose ids ``cancelled`` lists (its ``id`` column), in
    the order of the ids: the event index then grows at one end instead of everywhere."""
    return task_events.insert().from_select(
        ["task_id", "at", "kind", "detail"],
        sa.select(
            cancelled.c.id,
            sa.literal(now, sa.Float),
            sa.literal(EventKind.CANCELLED.value),
            sa.literal(detail),
        ).order_by(cancelled.c.id),
    )


def code_from_row(conn: Connection, row: Any) -> Code:
    rev_row = conn.execute(
        sa.select(*_REVISION_COLUMNS).where(code_revisions.c.id == row.latest_revision_id)
    ).one()
    return Code(
        id=row.id,
        project_id=row.project_id,
        name=row.name,
        rev=row.rev,
        latest_revision=revision_from_row(rev_row),
        paused=bool(row.paused),
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def code_by_id(conn: Connection, code_id: str, project_id: str | None = None) -> Code:
    query = codes.select().where(codes.c.id == code_id)
    if project_id is not None:
        query = query.where(codes.c.project_id == project_id)
    row = conn.execute(query).first()
    if row is None:
        raise NotFound("Code package not found")
    return code_from_row(conn, row)


def code_by_name(conn: Connection, project_id: str, name: str) -> Code | None:
    row = conn.execute(codes.select().where(codes.c.project_id == project_id, codes.c.name == name)).first()
    return None if row is None else code_from_row(conn, row)


class CodeQueries(Transactional):
    def save_code(self, project_id: str, spec: CodeSpec, archive: bytes | None, checksum: str | None) -> Code:
        now = timeutil.now()
        revision_id = ids.new_id()
        with self._write() as conn:
            existing = conn.execute(
                codes.select().where(codes.c.project_id == project_id, codes.c.name == spec.name)
            ).first()
            if existing is None:
                code_id, rev = ids.new_id(), 1
                conn.execute(
                    codes.insert().values(
                        id=code_id,
                        project_id=project_id,
                        name=spec.name,
                        rev=rev,
                        latest_revision_id=revision_id,
                        max_concurrency=spec.max_concurrency,
                        created_at=now,
                        updated_at=now,
                    )
                )
            else:
                code_id, rev = existing.id, existing.rev + 1
                conn.execute(
                    codes.update()
                    .where(codes.c.id == code_id)
                    .values(
                        rev=rev,
                        latest_revision_id=revision_id,
                        max_concurrency=spec.max_concurrency,
                        updated_at=now,
                    )
                )
            conn.execute(
                code_revisions.insert().values(
                    id=revision_id,
                    code_id=code_id,
                    project_id=project_id,
                    rev=rev,
                    spec=_spec_to_json(spec),
                    checksum=checksum,
                    code_size=len(archive) if archive is not None else None,
                    archive=archive,
                    created_at=now,
                )
            )
            return code_by_id(conn, code_id, project_id)

    def get_code(self, project_id: str, code_id: str) -> Code:
        with self._read() as conn:
            return code_by_id(conn, code_id, project_id)

    def find_code(self, project_id: str, name: str) -> Code | None:
        with self._read() as conn:
            return code_by_name(conn, project_id, name)

    def list_codes(self, project_id: str, page: int, per_page: int) -> list[Code]:
        with self._read() as conn:
            rows = conn.execute(
                codes.select()
                .where(codes.c.project_id == project_id)
                .order_by(codes.c.name)
                .limit(per_page)
                .offset(page * per_page)
            ).all()
            return [code_from_row(conn, row) for row in rows]

    def delete_code(self, project_id: str, code_id: str) -> None:
        with self._write() as conn:
            code_by_id(conn, code_id, project_id)
            self._cancel_queued(conn, code_id, "code package deleted", "its code package was deleted")
            conn.execute(code_revisions.delete().where(code_revisions.c.code_id == code_id))
            conn.execute(codes.delete().where(codes.c.id == code_id))

    def list_revisions(self, project_id: str, code_id: str, page: int, per_page: int) -> list[CodeRevision]:
        with self._read() as conn:
            code_by_id(conn, code_id, project_id)
            rows = conn.execute(
                sa.select(*_REVISION_COLUMNS)
                .where(code_revisions.c.code_id == code_id)
                .order_by(code_revisions.c.rev.desc())
                .limit(per_page)
                .offset(page * per_page)
            ).all()
        return [revision_from_row(r) for r in rows]

    def get_revision(self, revision_id: str) -> CodeRevision:
        with self._read() as conn:
            row = conn.execute(
                sa.select(*_REVISION_COLUMNS).where(code_revisions.c.id == revision_id)
            ).first()
        if row is None:
            raise NotFound("Code revision not found (the code package was deleted)")
        return revision_from_row(row)

    def get_archive(self, project_id: str, code_id: str, rev: int | None) -> tuple[CodeRevision, bytes]:
        with self._read() as conn:
            code = code_by_id(conn, code_id, project_id)
            row = conn.execute(
                code_revisions.select().where(
                    code_revisions.c.code_id == code_id, code_revisions.c.rev == (rev or code.rev)
                )
            ).first()
        if row is None:
            raise NotFound(f"Revision {rev} not found")
        if row.archive is None:
            raise NotFound("This revision has no code archive (image only)")
        return revision_from_row(row), bytes(row.archive)

    def get_revision_archive(self, revision_id: str) -> bytes | None:
        with self._read() as conn:
            row = conn.execute(
                sa.select(code_revisions.c.archive).where(code_revisions.c.id == revision_id)
            ).first()
        if row is None:
            raise NotFound("Code revision not found (the code package was deleted)")
        return None if row.archive is None else bytes(row.archive)

    def set_paused(self, project_id: str, code_id: str, paused: bool) -> bool:
        """Pause or resume a package's queue; returns whether it changed anything."""
        with self._write() as conn:
            code = code_by_id(conn, code_id, project_id)
            if code.paused == paused:
                return False
            conn.execute(
                codes.update().where(codes.c.id == code_id).values(paused=paused, updated_at=timeutil.now())
            )
            return True

    def cancel_all(self, project_id: str, code_id: str) -> tuple[int, int]:
        """Cancel a package's queued tasks now and ask runners to stop its running ones.
        Returns (cancelled, stopping). A few statements whatever the number of tasks."""
        now = timeutil.now()
        with self._write() as conn:
            code_by_id(conn, code_id, project_id)
            cancelled = self._cancel_queued(conn, code_id, CANCELLED_MSG, "cancel_all while queued")
            stopping = conn.execute(
                tasks.update()
                .where(tasks.c.code_id == code_id, is_active())
                .values(cancel_requested=True, updated_at=now)
            ).rowcount
            return cancelled, int(stopping or 0)

    def _cancel_queued(self, conn: Connection, code_id: str, msg: str, detail: str) -> int:
        """Cancel every queued task of the package, each with its ``cancelled`` event; returns
        how many. Two statements whatever their number: the events first, while the tasks are
        still queued (a single writer makes that safe; PostgreSQL overrides this)."""
        now = timeutil.now()
        queued = queued_of(code_id)
        conn.execute(cancelled_events(sa.select(tasks.c.id).where(queued).subquery(), now, detail))
        cancelled = transition(conn, TaskStatus.CANCELLED, queued, **cancelled_values(msg, now))
        if cancelled:
            self._ended(conn, None)
        return cancelled

    def code_stats(self, project_id: str, code_id: str, since: float, until: float) -> dict[str, int]:
        with self._read() as conn:
            code_by_id(conn, code_id, project_id)
            rows = conn.execute(
                sa.select(tasks.c.status, sa.func.count())
                .where(
                    tasks.c.project_id == project_id,  # the listing index's range, then the package
                    tasks.c.created_at >= since,
                    tasks.c.created_at <= until,
                    tasks.c.code_id == code_id,
                )
                .group_by(tasks.c.status)
            ).all()
        counts = {status.value: 0 for status in TaskStatus}
        counts.update({row[0]: int(row[1]) for row in rows})
        return counts
