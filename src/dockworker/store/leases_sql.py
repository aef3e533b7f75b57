"""Tasks, the runner's side: the claim and the lease, and every report made under it.

Each report is conditional on the task still being leased to the reporting runner
(``transitions.leased``) and on the table allowing the move (``transitions.transition``): a late
or illegal report changes nothing and is recorded as a ``late_report_refused`` event."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from .. import timeutil
from ..errors import ClientError, NotFound
from ..models import MAX_PROGRESS_MSG, Task, TaskOutcome
from ..states import CANCELLED_MSG, EventKind, TaskStatus
from .codes_sql import code_by_id
from .schema import task_events, tasks
from .task_rows import insert_retry, load_task
from .transactions import Transactional, record_event
from .transitions import (
    held_by,
    is_active,
    leased,
    leased_transition,
    run_leased_transition,
    transition,
)

# The runner's two reports of every task, built once (transitions.leased_transition).
_TO_RUNNING = leased_transition(
    TaskStatus.RUNNING,
    attempts=tasks.c.attempts + 1,
    # progress belongs to an attempt; a msg left from the queue (why it waited) is moot
    percent=None,
    msg=None,
)


@functools.cache
def _finishing(status: TaskStatus) -> sa.Update:
    return leased_transition(status, lease_expires_at=None)


def _short(container_id: str) -> str:
    return container_id[:12]


class LeaseQueries(Transactional):
    # The dialect's claim: one statement that picks and leases a task and RETURNS its row.
    claim_statement: ClassVar[sa.TextClause]

    def claim(
        self, runner_id: str, clusters: Sequence[str], lease_ttl: float, starvation_s: float = 300.0
    ) -> Task | None:
        now = timeutil.now()
        with self._write() as conn:
            parameters = {
                "runner_id": runner_id,
                "lease_expires_at": now + lease_ttl,
                "starved_before": now - starvation_s,
                "now": now,
                "clusters": self._claim_clusters(sorted(set(clusters))),
            }
            self._plan_claim(conn)
            row = conn.execute(self.claim_statement, parameters).first()
            if row is None:
                return None
            self._record_claim(conn, row.id, runner_id)
            return Task.from_row(row)

    def _plan_claim(self, conn: Connection) -> None:
        """Set the claim's transaction up, for dialects that need to (PostgreSQL)."""

    def _claim_clusters(self, clusters: list[str]) -> object:
        """The runner's clusters as the claim statement takes them (SQLite: a JSON array)."""
        return json.dumps(clusters)

    def _record_claim(self, conn: Connection, task_id: str, runner_id: str) -> None:
        """The claim's event, for dialects whose claim statement does not write it itself."""
        record_event(conn, task_id, EventKind.CLAIMED, f"runner {runner_id}")

    def _refuse(self, conn: Connection, task_id: str, runner_id: str, what: str) -> None:
        record_event(conn, task_id, EventKind.LATE_REPORT_REFUSED, f"runner {runner_id}: {what}")

    def mark_running(
        self,
        task_id: str,
        runner_id: str,
        start_time: float,
        container_id: str = "",
        created_at: float | None = None,
    ) -> bool:
        with self._write() as conn:
            if created_at is not None:
                record_event(
                    conn, task_id, EventKind.CONTAINER_CREATED, _short(container_id), container_id, created_at
                )
            row = run_leased_transition(
                conn, _TO_RUNNING, task_id, runner_id, start_time=start_time, updated_at=timeutil.now()
            )
            if row is None:
                return False
            detail = f"container {_short(container_id)} started by runner {runner_id}"
            record_event(conn, task_id, EventKind.STARTED, detail, container_id or None)
            return True

    def record_unreported_start(self, task_id: str, container_id: str, runner_id: str) -> bool:
        """Count a container start that its runner never reported (it died, or lost its lease,
        between starting the container and saying so), whatever state the task is in now.
        Returns False when that start was already counted."""
        with self._write() as conn:
            # The task's row locked first (PostgreSQL; SQLite's writes are serial anyway): two
            # callers that find the same container (a reaper and the task's own clean-up) would
            # otherwise both find it uncounted and count it twice.
            locked = sa.select(tasks.c.id).where(tasks.c.id == task_id).with_for_update()
            if conn.execute(locked).first() is None:
                return False
            counted = conn.execute(
                sa.select(task_events.c.id).where(
                    task_events.c.task_id == task_id,
                    task_events.c.kind == EventKind.STARTED.value,
                    # Events written before migration 0007 know the short id only.
                    task_events.c.container_id.in_({container_id, _short(container_id)}),
                )
            ).first()
            if counted is not None:
                return False
            updated = conn.execute(
                tasks.update().where(tasks.c.id == task_id).values(attempts=tasks.c.attempts + 1)
            ).rowcount
            if updated:
                detail = f"container {_short(container_id)} started by runner {runner_id}, never reported"
                record_event(conn, task_id, EventKind.STARTED, detail, container_id)
            return bool(updated)

    def report_progress(self, task_id: str, runner_id: str, percent: int | None, msg: str | None) -> bool:
        if percent is not None and not 0 <= percent <= 100:
            raise ClientError(f"percent {percent} is not within 0-100")
        if msg is not None and len(msg) > MAX_PROGRESS_MSG:
            raise ClientError(f"msg is longer than {MAX_PROGRESS_MSG} characters")
        if msg is not None and "\x00" in msg:  # PostgreSQL's text cannot hold it
            raise ClientError("msg contains a NUL character")
        values: dict[str, Any] = {"updated_at": timeutil.now()}
        if percent is not None:
            values["percent"] = percent
        if msg is not None:
            values["msg"] = msg
        with self._write() as conn:
            return bool(
                conn.execute(tasks.update().where(leased(task_id, runner_id)).values(**values)).rowcount
            )

    def finish(self, task_id: str, runner_id: str, outcome: TaskOutcome) -> bool:
        now = timeutil.now()
        # An outcome without a message (complete) keeps the worker's last progress msg.
        msg = {"msg": outcome.msg} if outcome.msg else {}
        with self._write() as conn:
            row = run_leased_transition(
                conn,
                _finishing(outcome.status),
                task_id,
                runner_id,
                exit_code=outcome.exit_code,
                cpu_time_ms=outcome.cpu_time_ms,
                peak_memory_bytes=outcome.peak_memory_bytes,
                end_time=now,
                updated_at=now,
                **msg,
            )
            if row is None:
                self._refuse(conn, task_id, runner_id, str(outcome.status))
                return False
            exited = ""
            if outcome.exit_code is not None and not outcome.msg.startswith("exit code"):
                exited = f"container exited with code {outcome.exit_code}"
            detail = "; ".join(p for p in (exited, outcome.msg) if p)
            record_event(conn, task_id, EventKind.entering(outcome.status), detail)
            retried = outcome.status in (TaskStatus.ERROR, TaskStatus.TIMEOUT) and self._auto_retry(
                conn, task_id
            )
            # A retry names itself in the ended task's row: that row is then not the final one.
            self._ended(conn, [task_id], () if retried else [Task.from_row(row)])
            return True

    def _auto_retry(self, conn: Connection, task_id: str) -> bool:
        """Queue the task's automatic retry if it has one left; whether it did."""
        task = load_task(conn, task_id)
        try:
            code = code_by_id(conn, task.code_id)
        except NotFound:
            return False
        spec = code.latest_revision.spec
        retries = spec.retries if task.retries is None else task.retries
        delay = spec.retries_delay if task.retries_delay is None else task.retries_delay
        if task.retry_count < retries:
            retry = insert_retry(conn, task, code, delay)
            detail = f"automatic retry {task.retry_count + 1} of {retries}: {retry.id}"
            record_event(conn, task_id, EventKind.RETRIED, detail)
            return True
        return False

    def requeue_after_infra_failure(
        self, task_id: str, runner_id: str, reason: str, budget: int, delay: float, max_delay: float = 60.0
    ) -> Task | None:
        with self._write() as conn:
            row = conn.execute(tasks.select().where(leased(task_id, runner_id)).with_for_update()).first()
            if row is None:
                self._refuse(conn, task_id, runner_id, "infrastructure error")
                return None
            self._requeue_or_fail(conn, Task.from_row(row), reason, budget, delay, max_delay)
            return load_task(conn, task_id)

    def release(self, task_id: str, runner_id: str, reason: str) -> bool:
        """Hand a task back to the queue at its old place, without spending its retry budget:
        its runner cannot run anything now (its engine is unreachable), through no fault of the
        task. A cancel requested meanwhile ends it as cancelled."""
        now = timeutil.now()
        with self._write() as conn:
            row = conn.execute(tasks.select().where(leased(task_id, runner_id)).with_for_update()).first()
            if row is None:
                return False
            if row.cancel_requested:
                target, kind = TaskStatus.CANCELLED, EventKind.CANCELLED
                values: dict[str, Any] = dict(msg=CANCELLED_MSG, end_time=now)
            else:
                target, kind = TaskStatus.QUEUED, EventKind.RELEASED
                values = dict(msg=f"waiting: {reason}", start_time=None, runner_id=None)
            if not transition(
                conn, target, leased(task_id, runner_id), lease_expires_at=None, updated_at=now, **values
            ):
                return False
            if target is TaskStatus.CANCELLED:
                self._ended(conn, [task_id])
            record_event(conn, task_id, kind, f"runner {runner_id}: {reason}")
            return True

    def _requeue_or_fail(
        self, conn: Connection, task: Task, reason: str, budget: int, delay: float, max_delay: float
    ) -> None:
        now = timeutil.now()
        attempts = task.infra_attempts + 1
        if task.cancel_requested:
            target, kind = TaskStatus.CANCELLED, EventKind.CANCELLED
            values: dict[str, Any] = dict(msg=CANCELLED_MSG, end_time=now)
        elif attempts > budget:
            target, kind = TaskStatus.ERROR, EventKind.ERROR
            msg = f"infrastructure error: {reason} (gave up after {attempts} attempts)"
            values = dict(msg=msg, end_time=now)
        else:
            target, kind = TaskStatus.QUEUED, EventKind.INFRA_RETRY
            backoff = min(delay * 2 ** (attempts - 1), max_delay)
            values = dict(
                msg=f"retrying after infrastructure error: {reason}",
                run_at=now + backoff,
                start_time=None,
                runner_id=None,
            )
        if transition(
            conn,
            target,
            leased(task.id, task.runner_id or ""),
            infra_attempts=attempts,
            lease_expires_at=None,
            updated_at=now,
            **values,
        ):
            record_event(conn, task.id, kind, f"attempt {attempts}: {reason}")
            if target is not TaskStatus.QUEUED:
                self._ended(conn, [task.id])

    def heartbeat(self, runner_id: str, task_ids: Iterable[str], lease_ttl: float) -> set[str]:
        wanted = list(task_ids)
        if not wanted:
            return set()
        with self._write() as conn:
            condition = sa.and_(tasks.c.id.in_(wanted), held_by(runner_id))
            conn.execute(tasks.update().where(condition).values(lease_expires_at=timeutil.now() + lease_ttl))
            return {r.id for r in conn.execute(sa.select(tasks.c.id).where(condition)).all()}

    def cancel_requested(self, runner_id: str) -> set[str]:
        with self._read() as conn:
            rows = conn.execute(
                sa.select(tasks.c.id).where(held_by(runner_id), tasks.c.cancel_requested.is_(True))
            ).all()
        return {r.id for r in rows}

    def expire_leases(self, budget: int, delay: float, max_delay: float = 60.0) -> list[Task]:
        now = timeutil.now()
        expired: list[Task] = []
        with self._write() as conn:
            rows = conn.execute(
                tasks.select()
                .where(is_active(), tasks.c.lease_expires_at < now)
                # Several housekeepers (PostgreSQL): each expired lease is handled by one of them.
                .with_for_update(skip_locked=True)
            ).all()
            for row in rows:
                task = Task.from_row(row)
                reason = f"runner {task.runner_id} lost its lease"
                self._requeue_or_fail(conn, task, reason, budget, delay, max_delay)
                expired.append(load_task(conn, task.id))
        return expired

    def leased_task_ids(self, runner_id: str) -> set[str]:
        with self._read() as conn:
            rows = conn.execute(sa.select(tasks.c.id).where(held_by(runner_id))).all()
        return {r.id for r in rows}

    def active_among(self, task_ids: Iterable[str]) -> set[str]:
        wanted = sorted(set(task_ids))
        found: set[str] = set()
        with self._read() as conn:
            for start in range(0, len(wanted), 500):  # a bounded number of bind parameters
                chunk = wanted[start : start + 500]
                rows = conn.execute(sa.select(tasks.c.id).where(tasks.c.id.in_(chunk), is_active())).all()
                found.update(r.id for r in rows)
        return found
