"""Task logs (chunks appended as the container writes) and task events."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from ..models import TaskEvent
from ..states import EventKind
from .schema import task_events, task_log_chunks, tasks
from .transactions import Transactional, record_event


class LogQueries(Transactional):
    def append_log(self, task_id: str, data: bytes, output_bytes: int | None = None) -> None:
        """Append to the task's log; ``output_bytes`` records how much of the container's
        output has been consumed, for a runner that re-adopts the container later."""
        with self._write() as conn:
            # the task's row locked (PostgreSQL): appends to one log are written one after another
            size = sa.select(tasks.c.log_size).where(tasks.c.id == task_id).with_for_update()
            start = conn.execute(size).scalar_one()
            seq = conn.execute(
                sa.select(sa.func.coalesce(sa.func.max(task_log_chunks.c.seq) + 1, 0)).where(
                    task_log_chunks.c.task_id == task_id
                )
            ).scalar_one()
            conn.execute(task_log_chunks.insert().values(task_id=task_id, seq=seq, start=start, data=data))
            values: dict[str, Any] = {"log_size": start + len(data)}
            if output_bytes is not None:
                values["output_bytes"] = output_bytes
            conn.execute(tasks.update().where(tasks.c.id == task_id).values(**values))

    def read_log(self, task_id: str, offset: int = 0) -> bytes:
        with self._read() as conn:
            rows = conn.execute(
                sa.select(task_log_chunks.c.start, task_log_chunks.c.data)
                .where(
                    task_log_chunks.c.task_id == task_id,
                    task_log_chunks.c.start + sa.func.length(task_log_chunks.c.data) > offset,
                )
                .order_by(task_log_chunks.c.seq)
            ).all()
        if not rows:
            return b""
        joined = b"".join(bytes(r.data) for r in rows)
        return joined[max(0, offset - rows[0].start) :]

    def add_event(
        self, task_id: str, kind: EventKind, detail: str = "", container_id: str | None = None
    ) -> None:
        with self._write() as conn:
            record_event(conn, task_id, kind, detail, container_id)

    def list_events(self, task_id: str) -> list[TaskEvent]:
        with self._read() as conn:
            rows = conn.execute(
                task_events.select().where(task_events.c.task_id == task_id).order_by(task_events.c.id)
            ).all()
        return [
            TaskEvent(at=r.at, kind=EventKind(r.kind), detail=r.detail, container_id=r.container_id)
            for r in rows
        ]
