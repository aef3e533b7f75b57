"""Tasks, the API's side: queue, list, inspect, cancel, progress, retry."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from .. import timeutil
from ..errors import ClientError, Conflict, NotFound
from ..models import NewTask, Task, TaskFilter
from ..states import CANCELLED_MSG, EventKind, TaskStatus
from .codes_sql import cancelled_values, code_by_id
from .schema import tasks
from .task_rows import insert_retry, insert_tasks, load_task
from .transactions import Transactional, record_event
from .transitions import is_queued, status_in, transition

_NEWEST_FIRST = (tasks.c.created_at.desc(), tasks.c.id.desc())


def _listing_conditions(project_id: str, task_filter: TaskFilter) -> list[sa.ColumnElement[bool]]:
    conditions: list[sa.ColumnElement[bool]] = [tasks.c.project_id == project_id]
    if task_filter.code_name is not None:
        conditions.append(tasks.c.code_name == task_filter.code_name)
    if task_filter.statuses:
        conditions.append(status_in(task_filter.statuses))
    # As floats: an integer beyond the database's range would not even be sent (SQLite).
    if task_filter.from_time is not None:
        conditions.append(tasks.c.created_at >= float(task_filter.from_time))
    if task_filter.to_time is not None:
        conditions.append(tasks.c.created_at <= float(task_filter.to_time))
    if task_filter.schedule_id is not None:
        conditions.append(tasks.c.schedule_id == task_filter.schedule_id)
    if task_filter.original_task_id is not None:
        chain = task_filter.original_task_id
        conditions.append(sa.or_(tasks.c.original_task_id == chain, tasks.c.id == chain))
    return conditions


class TaskQueries(Transactional):
    def enqueue(self, project_id: str, new_tasks: Sequence[NewTask], max_timeout: int) -> list[Task]:
        with self._write() as conn:
            return insert_tasks(conn, project_id, new_tasks, max_timeout)

    def get_task(self, project_id: str, task_id: str) -> Task:
        with self._read() as conn:
            return load_task(conn, task_id, project_id)

    def load_task(self, task_id: str) -> Task:
        with self._read() as conn:
            return load_task(conn, task_id)

    def list_tasks(self, project_id: str, task_filter: TaskFilter) -> list[Task]:
        """Newest first. The page's ids are found first, from the index on (project, creation
        time, id) alone, and only that page's rows are read: a deep page costs a walk of that
        index, not of the rows before it. ``after_id`` (keyset paging) seeks instead of walking."""
        page = (
            sa.select(tasks.c.id)
            .where(*_listing_conditions(project_id, task_filter))
            .order_by(*_NEWEST_FIRST)
            .limit(task_filter.per_page)
        )
        with self._read() as conn:
            self._plan_listing(conn)
            if task_filter.after_id is not None:
                cursor = conn.execute(
                    sa.select(tasks.c.created_at).where(
                        tasks.c.id == task_filter.after_id, tasks.c.project_id == project_id
                    )
                ).first()
                if cursor is None:
                    raise ClientError("cursor: no such task in this project")
                # A row comparison: both dialects read it as a range of the listing index.
                page = page.where(
                    sa.tuple_(tasks.c.created_at, tasks.c.id)
                    < sa.tuple_(sa.literal(cursor.created_at, sa.Float), sa.literal(task_filter.after_id))
                )
            else:
                page = page.offset(task_filter.page * task_filter.per_page)
            ids = page.subquery()
            found = [Task.from_row(r) for r in conn.execute(tasks.select().join(ids, ids.c.id == tasks.c.id))]
        return sorted(found, key=lambda t: (t.created_at, t.id), reverse=True)

    def _plan_listing(self, conn: Connection) -> None:
        """Dialects whose planner may read the listing otherwise set themselves up here."""

    def request_cancel(self, project_id: str, task_id: str) -> Task:
        now = timeutil.now()
        with self._write() as conn:
            # Lock the row first (PostgreSQL): a claim committing meanwhile is then seen, and the
            # cancel becomes a cancel request instead of being lost.
            conn.execute(sa.select(tasks.c.id).where(tasks.c.id == task_id).with_for_update())
            task = load_task(conn, task_id, project_id)
            if task.status.is_terminal:
                raise Conflict(f"Task already finished ({task.status})")
            queued = sa.and_(tasks.c.id == task_id, is_queued())
            if transition(conn, TaskStatus.CANCELLED, queued, **cancelled_values(CANCELLED_MSG, now)):
                record_event(conn, task_id, EventKind.CANCELLED, "cancelled by user while queued")
                self._ended(conn, [task_id])
            else:
                conn.execute(
                    tasks.update().where(tasks.c.id == task_id).values(cancel_requested=True, updated_at=now)
                )
                record_event(conn, task_id, EventKind.CANCEL_REQUESTED)
            return load_task(conn, task_id)

    def set_progress(self, project_id: str, task_id: str, percent: int | None, msg: str | None) -> None:
        with self._write() as conn:
            task = load_task(conn, task_id, project_id)
            if task.status.is_terminal:
                raise Conflict(f"Task already finished ({task.status})")
            values: dict[str, Any] = {"updated_at": timeutil.now()}
            if percent is not None:
                values["percent"] = percent
            if msg is not None:
                values["msg"] = msg
            conn.execute(tasks.update().where(tasks.c.id == task_id).values(**values))

    def retry(self, project_id: str, task_id: str, delay: int) -> Task:
        with self._write() as conn:
            task = load_task(conn, task_id, project_id)
            if not task.status.is_terminal:
                raise Conflict(f"Task is still {task.status}; only finished tasks can be retried")
            try:
                code = code_by_id(conn, task.code_id)
            except NotFound:
                raise NotFound("The task's code package was deleted") from None
            retry = insert_retry(conn, task, code, delay)
            record_event(conn, task_id, EventKind.RETRIED, f"manual retry as task {retry.id}")
            return retry
