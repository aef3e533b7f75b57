"""Task rows: the one builder of new tasks (queued by the API, by a schedule, or as a retry),
inserted in bulk with their ``queued`` events, and reading a task back."""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from .. import ids, timeutil
from ..errors import ClientError, NotFound
from ..models import Code, NewTask, Task
from ..states import EventKind, TaskStatus
from .clusters_sql import check_clusters
from .codes_sql import code_by_name
from .schema import task_events, tasks

# A SQLite statement takes at most 32,766 bind parameters: a multi-row insert is cut into
# statements of at most this many.
MAX_BIND_PARAMETERS = 32_000

# What a new row holds in the columns the builder does not set (server defaults, or nothing yet).
_UNSET: dict[str, Any] = {
    f.name: None for f in dataclasses.fields(Task) if f.default is dataclasses.MISSING
} | dict(cancel_requested=False, attempts=0, infra_attempts=0, log_size=0, output_bytes=0, retry_count=0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TaskRow:
    """A task about to be inserted, and what its ``queued`` event says."""

    values: dict[str, Any]
    event_detail: str = ""

    @property
    def id(self) -> str:
        return str(self.values["id"])

    def as_task(self) -> Task:
        return Task(**{**_UNSET, **self.values, "status": TaskStatus(self.values["status"])})


def new_row(
    code: Code,
    *,
    payload: str,
    priority: int,
    timeout: int,
    delay: float,
    label: str | None,
    cluster: str,
    retries: int | None,
    retries_delay: int | None,
    schedule_id: str | None,
    now: float,
    retry_of: Task | None = None,
    event_detail: str = "",
) -> TaskRow:
    return TaskRow(
        values=dict(
            id=ids.new_id(),
            project_id=code.project_id,
            code_id=code.id,
            code_name=code.name,
            code_rev=code.rev,
            revision_id=code.latest_revision.id,
            status=TaskStatus.QUEUED.value,
            msg=None,
            priority=priority,
            timeout=timeout,
            delay=int(delay),
            label=label,
            cluster=cluster,
            payload=payload,
            created_at=now,
            updated_at=now,
            run_at=now + delay,
            retry_count=0 if retry_of is None else retry_of.retry_count + 1,
            original_task_id=None if retry_of is None else retry_of.original_task_id or retry_of.id,
            retries=retries,
            retries_delay=retries_delay,
            schedule_id=schedule_id,
        ),
        event_detail=event_detail,
    )


def insert_rows(conn: Connection, rows: Sequence[TaskRow]) -> list[Task]:
    """Insert the tasks and their ``queued`` events. Written by hand once per shape: SQLAlchemy
    would compile a multi-row VALUES anew for every batch, at a cost far above the insert's
    (the values are plain numbers and text: no type conversion is needed)."""
    if not rows:
        return []
    if conn.dialect.name == "postgresql":
        # One statement with the rows as one JSON parameter: short whatever their number
        # (psycopg parses a long statement in Python at every execution).
        values = [{**r.values, "event_detail": r.event_detail} for r in rows]
        conn.exec_driver_sql(_json_insert(tuple(rows[0].values), conn.dialect), (json.dumps(values),))
    else:
        now = rows[0].values["created_at"]
        events = [
            dict(task_id=r.id, at=now, kind=EventKind.QUEUED.value, detail=r.event_detail) for r in rows
        ]
        for table, values in ((tasks, [r.values for r in rows]), (task_events, events)):
            _insert_values(conn, table, values)
    return [r.as_task() for r in rows]


def _insert_values(conn: Connection, table: sa.Table, rows: list[dict[str, Any]]) -> None:
    """Multi-row ``INSERT ... VALUES``, cut only where a statement's bind parameters end."""
    columns = tuple(rows[0])
    per_statement = max(1, MAX_BIND_PARAMETERS // len(columns))
    for start in range(0, len(rows), per_statement):
        chunk = rows[start : start + per_statement]
        statement = _values_insert(table.name, columns, len(chunk))
        conn.exec_driver_sql(statement, tuple(row[column] for row in chunk for column in columns))


@functools.lru_cache(maxsize=64)
def _values_insert(table: str, columns: tuple[str, ...], count: int) -> str:
    """``INSERT INTO table (columns) VALUES (?, ...), (?, ...)`` for ``count`` rows (qmark)."""
    row = "(" + ", ".join(["?"] * len(columns)) + ")"
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES " + ", ".join([row] * count)


@functools.lru_cache(maxsize=8)
def _json_insert(columns: tuple[str, ...], dialect: sa.Dialect) -> str:
    """PostgreSQL: the tasks and their events from one ``json_to_recordset(%s)``."""
    names = ", ".join(columns)
    typed = ", ".join(f"{column} {tasks.c[column].type.compile(dialect)}" for column in columns)
    return f"""
        WITH given AS (SELECT * FROM json_to_recordset(%s) AS r({typed}, event_detail text)),
        added AS (INSERT INTO tasks ({names}) SELECT {names} FROM given)
        INSERT INTO task_events (task_id, at, kind, detail)
        SELECT id, created_at, '{EventKind.QUEUED.value}', event_detail FROM given ORDER BY id
    """


def insert_tasks(
    conn: Connection, project_id: str, new_tasks: Sequence[NewTask], max_timeout: int
) -> list[Task]:
    """Validate every task first, then insert them all: a batch is all or nothing."""
    now = timeutil.now()
    found: dict[str, Code] = {}
    rows: list[TaskRow] = []
    for index, new in enumerate(new_tasks):
        code = found.get(new.code_name)
        if code is None:
            code = code_by_name(conn, project_id, new.code_name)
            if code is None:
                raise NotFound(f"tasks[{index}]: code package {new.code_name!r} not found")
            found[new.code_name] = code
        timeout = new.timeout or max_timeout
        if timeout > max_timeout:
            raise ClientError(f"tasks[{index}]: timeout {timeout} exceeds the maximum of {max_timeout} s")
        spec = code.latest_revision.spec
        rows.append(
            new_row(
                code,
                payload=new.payload,
                priority=spec.default_priority if new.priority is None else new.priority,
                timeout=timeout,
                delay=new.delay,
                label=new.label,
                cluster=new.cluster,
                retries=new.retries,
                retries_delay=new.retries_delay,
                schedule_id=new.schedule_id,
                now=now,
                event_detail=f"by schedule {new.schedule_id}" if new.schedule_id else "",
            )
        )
    payloads: dict[str, list[str]] = {}
    for new in new_tasks:
        payloads.setdefault(new.cluster, []).append(new.payload)
    check_clusters(conn, project_id, payloads)
    return insert_rows(conn, rows)


def insert_retry(conn: Connection, task: Task, code: Code, delay: float) -> Task:
    """A new task that runs ``task`` again (same payload and settings) on the package's latest
    revision; the old task points to it."""
    row = new_row(
        code,
        payload=task.payload,
        priority=task.priority,
        timeout=task.timeout,
        delay=delay,
        label=task.label,
        cluster=task.cluster,
        retries=task.retries,
        retries_delay=task.retries_delay,
        schedule_id=task.schedule_id,
        now=timeutil.now(),
        retry_of=task,
        event_detail=f"retry of task {task.id}",
    )
    (retry,) = insert_rows(conn, [row])
    conn.execute(tasks.update().where(tasks.c.id == task.id).values(retry_task_id=retry.id))
    return retry


def load_task(conn: Connection, task_id: str, project_id: str | None = None) -> Task:
    query = tasks.select().where(tasks.c.id == task_id)
    if project_id is not None:
        query = query.where(tasks.c.project_id == project_id)
    row = conn.execute(query).first()
    if row is None:
        raise NotFound("Task not found")
    return Task.from_row(row)
