"""Transactions and the task event log, shared by every query module."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Collection, Iterator, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from .. import timeutil
from ..errors import InfrastructureError
from ..models import Task
from ..states import EventKind
from .errors import StorageFull, StoreUnavailable
from .schema import task_events
from .wakeup import TaskEnds

# Where a write transaction collects the tasks it ends (Connection.info), announced on commit.
_ENDED = "dockworker.ended"
_ENDED_FINAL = "dockworker.ended_final"
ANY_TASK = "*"

# PostgreSQL SQLSTATEs: disk_full; the classes of connection failures and of a server going down
# or refusing connections (too_many_connections sits in the "insufficient resources" class).
_PG_DISK_FULL = "53100"
_PG_UNAVAILABLE_CLASSES = ("08", "57P")
_PG_UNAVAILABLE = frozenset({"53300"})
# SQLite primary result codes.
_SQLITE_FULL = sqlite3.SQLITE_FULL
_SQLITE_UNAVAILABLE = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_CANTOPEN})


def classify(exc: sa.exc.DBAPIError) -> InfrastructureError | None:
    """The infrastructure error ``exc`` stands for, or None when it is about the statement (a
    bug, or a value the database refuses) rather than the database's state."""
    orig = exc.orig
    sqlite_code = getattr(orig, "sqlite_errorcode", None)
    if isinstance(sqlite_code, int):
        primary = sqlite_code & 0xFF
        if primary == _SQLITE_FULL:
            return StorageFull()
        if primary in _SQLITE_UNAVAILABLE:
            return StoreUnavailable(f"the database is unavailable: {orig}")
        return None
    sqlstate = getattr(orig, "sqlstate", None)
    if sqlstate == _PG_DISK_FULL:
        return StorageFull()
    if (
        exc.connection_invalidated
        or (isinstance(sqlstate, str) and sqlstate.startswith(_PG_UNAVAILABLE_CLASSES))
        or sqlstate in _PG_UNAVAILABLE
        or (sqlstate is None and isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError))
    ):
        return StoreUnavailable("the database cannot be reached", detail=_first_line(orig))
    return None


def _first_line(error: object) -> str:
    """The driver's reason on one line (psycopg adds hints on the lines after)."""
    text = str(error).strip()
    return text.splitlines()[0].strip() if text else type(error).__name__


@contextlib.contextmanager
def translated_errors() -> Iterator[None]:
    """Raise database failures as ``StoreUnavailable`` or ``StorageFull``; anything else as is."""
    try:
        yield
    except sa.exc.DBAPIError as exc:
        meaning = classify(exc)
        if meaning is None:
            raise
        raise meaning from exc
    except sa.exc.TimeoutError as exc:  # every connection of the pool is in use
        raise StoreUnavailable("no database connection became free in time") from exc


class Transactional:
    engine: Engine
    _task_ends: TaskEnds

    @contextlib.contextmanager
    def _write(self) -> Iterator[Connection]:
        ended: set[str] | None = None
        final: list[Task] = []
        with translated_errors(), self.engine.begin() as conn:
            try:
                yield conn
            finally:
                ended = conn.info.pop(_ENDED, None)
                final = conn.info.pop(_ENDED_FINAL, [])
        if ended is not None:  # committed
            self._task_ends.announce(None if ANY_TASK in ended else ended, final)

    def _ended(self, conn: Connection, task_ids: Collection[str] | None, final: Sequence[Task] = ()) -> None:
        """Note that this transaction moves these tasks (None: tasks it does not name) to a
        terminal state: waiters are told once it commits. ``final``: some of them as this
        transaction leaves them (``Store.ended_task``)."""
        noted: set[str] = conn.info.setdefault(_ENDED, set())
        noted.update([ANY_TASK] if task_ids is None else task_ids)
        conn.info.setdefault(_ENDED_FINAL, []).extend(final)

    @contextlib.contextmanager
    def _read(self) -> Iterator[Connection]:
        with (
            translated_errors(),
            self.engine.connect().execution_options(**self._read_options()) as conn,
            conn.begin(),
        ):
            yield conn

    def _read_options(self) -> dict[str, Any]:
        return {}


# One statement for every event, its values as parameters: SQLAlchemy builds and keys it once
# (an insert with the values in it is built, coerced and keyed again on every call).
_INSERT_EVENT = task_events.insert()


def record_event(
    conn: Connection,
    task_id: str,
    kind: EventKind,
    detail: str = "",
    container_id: str | None = None,
    at: float | None = None,
) -> None:
    """``at``: when it happened, if earlier than now."""
    conn.execute(
        _INSERT_EVENT,
        {
            "task_id": task_id,
            "at": timeutil.now() if at is None else at,
            "kind": kind.value,
            "detail": detail,
            "container_id": container_id,
        },
    )
