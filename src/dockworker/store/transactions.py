"""Transactions and the task event log, shared by every query module."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from sqlalchemy.engine import Connection, Engine

from .. import timeutil
from .schema import task_events


class Transactional:
    engine: Engine

    @contextlib.contextmanager
    def _write(self) -> Iterator[Connection]:
        with self.engine.begin() as conn:
            yield conn

    @contextlib.contextmanager
    def _read(self) -> Iterator[Connection]:
        with self.engine.connect().execution_options(**self._read_options()) as conn, conn.begin():
            yield conn

    def _read_options(self) -> dict[str, Any]:
        return {}

    def _event(self, conn: Connection, task_id: str, kind: str, detail: str) -> None:
        conn.execute(
            task_events.insert().values(task_id=task_id, at=timeutil.now(), kind=kind, detail=detail)
        )
