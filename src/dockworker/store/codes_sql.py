"""The SQL shared by every dialect, written with SQLAlchemy Core. Dialect modules supply the
engine and the claim statement."""

from __future__ import annotations

import abc
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from .. import ids, timeutil
from ..errors import ClientError, Conflict, NotFound
from ..models import (
    Code,
    CodeRevision,
    CodeSpec,
    NewTask,
    Task,
    TaskEvent,
    TaskFilter,
    TaskOutcome,
)
from ..states import ACTIVE, CANCELLED_MSG, TaskStatus
from .runners_sql import RunnerQueries
from .schedules_sql import ScheduleQueries
from .schema import code_revisions, codes, meta, task_events, task_log_chunks, tasks
from .tenancy_sql import TenancyQueries
from .transactions import Transactional
from .wakeup import InProcessWakeUps

_ACTIVE = [s.value for s in ACTIVE]


def _spec_from_json(data: dict[str, Any]) -> CodeSpec:
    return CodeSpec(**data)


def _spec_to_json(spec: CodeSpec) -> dict[str, Any]:
    return {name: getattr(spec, name) for name in CodeSpec.__slots__}


def _revision_from_row(row: Any) -> CodeRevision:
    return CodeRevision(
        id=row.id,
        code_id=row.code_id,
        project_id=row.project_id,
        rev=row.rev,
        spec=_spec_from_json(row.spec),
        checksum=row.checksum,
        code_size=row.code_size,
        created_at=row.created_at,
    )


_REVISION_COLUMNS = [c for c in code_revisions.c if c.name != "archive"]


class SqlStore(TenancyQueries, RunnerQueries, ScheduleQueries, Transactional, InProcessWakeUps, abc.ABC):
    """Everything but the claim and the connection setup. Dialects call ``super().__init__()``."""

    def migrate(self) -> None:
        from alembic import command
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
        config.attributes["connection_url"] = self.engine.url.render_as_string(hide_password=False)
        with self.engine.begin() as conn:
            config.attributes["connection"] = conn
            command.upgrade(config, "head")

    def close(self) -> None:
        self.engine.dispose()

    def installation_id(self) -> str:
        """A random id made once per database. Containers carry it, so that installations
        sharing a Docker engine never touch each other's containers."""
        with self._write() as conn:
            found = conn.execute(sa.select(meta.c.value).where(meta.c.key == "installation_id")).scalar()
            if found is None:
                found = ids.new_id()
                conn.execute(meta.insert().values(key="installation_id", value=found))
            return str(found)

    # --- code packages --------------------------------------------------------------------------

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
            return self._code_by_id(conn, project_id, code_id)

    def _code_by_id(self, conn: Connection, project_id: str, code_id: str) -> Code:
        row = conn.execute(
            codes.select().where(codes.c.id == code_id, codes.c.project_id == project_id)
        ).first()
        if row is None:
            raise NotFound("Code package not found")
        return self._code_from_row(conn, row)

    def _code_from_row(self, conn: Connection, row: Any) -> Code:
        rev_row = conn.execute(
            sa.select(*_REVISION_COLUMNS).where(code_revisions.c.id == row.latest_revision_id)
        ).one()
        return Code(
            id=row.id,
            project_id=row.project_id,
            name=row.name,
            rev=row.rev,
            latest_revision=_revision_from_row(rev_row),
            paused=bool(row.paused),
            created_at=row.created_at,
            updated_at=row.updated_at,
        )

    def get_code(self, project_id: str, code_id: str) -> Code:
        with self._read() as conn:
            return self._code_by_id(conn, project_id, code_id)

    def find_code(self, project_id: str, name: str) -> Code | None:
        with self._read() as conn:
            row = conn.execute(
                codes.select().where(codes.c.project_id == project_id, codes.c.name == name)
            ).first()
            return None if row is None else self._code_from_row(conn, row)

    def list_codes(self, project_id: str, page: int, per_page: int) -> list[Code]:
        with self._read() as conn:
            rows = conn.execute(
                codes.select()
                .where(codes.c.project_id == project_id)
                .order_by(codes.c.name)
                .limit(per_page)
                .offset(page * per_page)
            ).all()
            return [self._code_from_row(conn, row) for row in rows]

    def delete_code(self, project_id: str, code_id: str) -> None:
        now = timeutil.now()
        with self._write() as conn:
            self._code_by_id(conn, project_id, code_id)
            conn.execute(
                tasks.update()
                .where(tasks.c.code_id == code_id, tasks.c.status == TaskStatus.QUEUED.value)
                .values(
                    status=TaskStatus.CANCELLED.value,
                    msg="code package deleted",
                    end_time=now,
                    updated_at=now,
                )
            )
            conn.execute(code_revisions.delete().where(code_revisions.c.code_id == code_id))
            conn.execute(codes.delete().where(codes.c.id == code_id))

    def list_revisions(self, project_id: str, code_id: str, page: int, per_page: int) -> list[CodeRevision]:
        with self._read() as conn:
            self._code_by_id(conn, project_id, code_id)
            rows = conn.execute(
                sa.select(*_REVISION_COLUMNS)
                .where(code_revisions.c.code_id == code_id)
                .order_by(code_revisions.c.rev.desc())
                .limit(per_page)
                .offset(page * per_page)
            ).all()
        return [_revision_from_row(r) for r in rows]

    def get_revision(self, revision_id: str) -> CodeRevision:
        with self._read() as conn:
            row = conn.execute(
                sa.select(*_REVISION_COLUMNS).where(code_revisions.c.id == revision_id)
            ).first()
        if row is None:
            raise NotFound("Code revision not found (the code package was deleted)")
        return _revision_from_row(row)

    def get_archive(self, project_id: str, code_id: str, rev: int | None) -> tuple[CodeRevision, bytes]:
        with self._read() as conn:
            code = self._code_by_id(conn, project_id, code_id)
            row = conn.execute(
                code_revisions.select().where(
                    code_revisions.c.code_id == code_id, code_revisions.c.rev == (rev or code.rev)
                )
            ).first()
        if row is None:
            raise NotFound(f"Revision {rev} not found")
        if row.archive is None:
            raise NotFound("This revision has no code archive (image only)")
        return _revision_from_row(row), bytes(row.archive)

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
            code = self._code_by_id(conn, project_id, code_id)
            if code.paused == paused:
                return False
            conn.execute(
                codes.update().where(codes.c.id == code_id).values(paused=paused, updated_at=timeutil.now())
            )
            return True

    def cancel_all(self, project_id: str, code_id: str) -> tuple[int, int]:
        """Cancel a package's queued tasks now and ask runners to stop its running ones.
        Returns (cancelled, stopping)."""
        now = timeutil.now()
        with self._write() as conn:
            self._code_by_id(conn, project_id, code_id)
            queued = [
                r.id
                for r in conn.execute(
                    sa.select(tasks.c.id).where(
                        tasks.c.code_id == code_id, tasks.c.status == TaskStatus.QUEUED.value
                    )
                ).all()
            ]
            if queued:
                conn.execute(
                    tasks.update()
                    .where(tasks.c.id.in_(queued), tasks.c.status == TaskStatus.QUEUED.value)
                    .values(
                        status=TaskStatus.CANCELLED.value,
                        msg=CANCELLED_MSG,
                        end_time=now,
                        updated_at=now,
                    )
                )
                conn.execute(
                    task_events.insert(),
                    [
                        dict(task_id=i, at=now, kind="cancelled", detail="cancel_all while queued")
                        for i in queued
                    ],
                )
            running = conn.execute(
                tasks.update()
                .where(tasks.c.code_id == code_id, tasks.c.status.in_(_ACTIVE))
                .values(cancel_requested=True, updated_at=now)
            ).rowcount
            return len(queued), int(running or 0)

    def code_stats(self, project_id: str, code_id: str, since: float, until: float) -> dict[str, int]:
        with self._read() as conn:
            self._code_by_id(conn, project_id, code_id)
            rows = conn.execute(
                sa.select(tasks.c.status, sa.func.count())
                .where(tasks.c.code_id == code_id, tasks.c.created_at >= since, tasks.c.created_at <= until)
                .group_by(tasks.c.status)
            ).all()
        counts = {status.value: 0 for status in TaskStatus}
        counts.update({row[0]: int(row[1]) for row in rows})
        return counts

    # --- tasks: the API's side ------------------------------------------------------------------

    def enqueue(self, project_id: str, new_tasks: Sequence[NewTask], max_timeout: int) -> list[Task]:
        with self._write() as conn:
            ids_ = self._insert_tasks(conn, project_id, new_tasks, max_timeout)
            return [self._task(conn, task_id) for task_id in ids_]

    def _insert_tasks(
        self, conn: Connection, project_id: str, new_tasks: Sequence[NewTask], max_timeout: int
    ) -> list[str]:
        """Validate every task first, then insert them all: a batch is all or nothing."""
        now = timeutil.now()
        found: dict[str, Code] = {}
        rows: list[dict[str, Any]] = []
        for index, new in enumerate(new_tasks):
            code = found.get(new.code_name)
            if code is None:
                row = conn.execute(
                    codes.select().where(codes.c.project_id == project_id, codes.c.name == new.code_name)
                ).first()
                if row is None:
                    raise NotFound(f"tasks[{index}]: code package {new.code_name!r} not found")
                code = found[new.code_name] = self._code_from_row(conn, row)
            spec = code.latest_revision.spec
            timeout = new.timeout or max_timeout
            if timeout > max_timeout:
                raise ClientError(f"tasks[{index}]: timeout {timeout} exceeds the maximum of {max_timeout} s")
            rows.append(
                dict(
                    id=ids.new_id(),
                    project_id=project_id,
                    code_id=code.id,
                    code_name=code.name,
                    code_rev=code.rev,
                    revision_id=code.latest_revision.id,
                    status=TaskStatus.QUEUED.value,
                    msg=None,
                    priority=spec.default_priority if new.priority is None else new.priority,
                    timeout=timeout,
                    delay=new.delay,
                    label=new.label,
                    cluster=new.cluster,
                    payload=new.payload,
                    created_at=now,
                    updated_at=now,
                    run_at=now + new.delay,
                    retry_count=0,
                    retries=new.retries,
                    retries_delay=new.retries_delay,
                    schedule_id=new.schedule_id,
                )
            )
        if rows:
            conn.execute(tasks.insert(), rows)
            detail = f"by schedule {new_tasks[0].schedule_id}" if new_tasks[0].schedule_id else ""
            conn.execute(
                task_events.insert(),
                [dict(task_id=r["id"], at=now, kind="queued", detail=detail) for r in rows],
            )
        return [r["id"] for r in rows]

    def _task(self, conn: Connection, task_id: str, project_id: str | None = None) -> Task:
        query = tasks.select().where(tasks.c.id == task_id)
        if project_id is not None:
            query = query.where(tasks.c.project_id == project_id)
        row = conn.execute(query).first()
        if row is None:
            raise NotFound("Task not found")
        return Task.from_row(row)

    def get_task(self, project_id: str, task_id: str) -> Task:
        with self._read() as conn:
            return self._task(conn, task_id, project_id)

    def load_task(self, task_id: str) -> Task:
        with self._read() as conn:
            return self._task(conn, task_id)

    def list_tasks(self, project_id: str, task_filter: TaskFilter) -> list[Task]:
        query = tasks.select().where(tasks.c.project_id == project_id)
        if task_filter.code_name is not None:
            query = query.where(tasks.c.code_name == task_filter.code_name)
        if task_filter.statuses:
            query = query.where(tasks.c.status.in_(sorted(s.value for s in task_filter.statuses)))
        if task_filter.from_time is not None:
            query = query.where(tasks.c.created_at >= task_filter.from_time)
        if task_filter.to_time is not None:
            query = query.where(tasks.c.created_at <= task_filter.to_time)
        if task_filter.schedule_id is not None:
            query = query.where(tasks.c.schedule_id == task_filter.schedule_id)
        if task_filter.original_task_id is not None:
            chain = task_filter.original_task_id
            query = query.where(sa.or_(tasks.c.original_task_id == chain, tasks.c.id == chain))
        query = (
            query.order_by(tasks.c.created_at.desc(), tasks.c.id.desc())
            .limit(task_filter.per_page)
            .offset(task_filter.page * task_filter.per_page)
        )
        with self._read() as conn:
            return [Task.from_row(r) for r in conn.execute(query).all()]

    def request_cancel(self, project_id: str, task_id: str) -> Task:
        now = timeutil.now()
        with self._write() as conn:
            # Lock the row first (PostgreSQL): a claim committing meanwhile is then seen, and the
            # cancel becomes a cancel request instead of being lost.
            conn.execute(sa.select(tasks.c.id).where(tasks.c.id == task_id).with_for_update())
            task = self._task(conn, task_id, project_id)
            if task.status.is_terminal:
                raise Conflict(f"Task already finished ({task.status})")
            if task.status is TaskStatus.QUEUED:
                conn.execute(
                    tasks.update()
                    .where(tasks.c.id == task_id, tasks.c.status == TaskStatus.QUEUED.value)
                    .values(
                        status=TaskStatus.CANCELLED.value,
                        msg=CANCELLED_MSG,
                        end_time=now,
                        updated_at=now,
                    )
                )
                self._event(conn, task_id, "cancelled", "cancelled by user while queued")
            else:
                conn.execute(
                    tasks.update().where(tasks.c.id == task_id).values(cancel_requested=True, updated_at=now)
                )
                self._event(conn, task_id, "cancel_requested", "")
            return self._task(conn, task_id)

    def set_progress(self, project_id: str, task_id: str, percent: int | None, msg: str | None) -> None:
        with self._write() as conn:
            task = self._task(conn, task_id, project_id)
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
            task = self._task(conn, task_id, project_id)
            if not task.status.is_terminal:
                raise Conflict(f"Task is still {task.status}; only finished tasks can be retried")
            code_row = conn.execute(codes.select().where(codes.c.id == task.code_id)).first()
            if code_row is None:
                raise NotFound("The task's code package was deleted")
            new_id = self._insert_retry(conn, task, self._code_from_row(conn, code_row), delay)
            self._event(conn, task_id, "retried", f"manual retry as task {new_id}")
            return self._task(conn, new_id)

    def _insert_retry(self, conn: Connection, task: Task, code: Code, delay: float) -> str:
        now = timeutil.now()
        new_id = ids.new_id()
        conn.execute(
            tasks.insert().values(
                id=new_id,
                project_id=task.project_id,
                code_id=code.id,
                code_name=code.name,
                code_rev=code.rev,
                revision_id=code.latest_revision.id,
                status=TaskStatus.QUEUED.value,
                priority=task.priority,
                timeout=task.timeout,
                delay=int(delay),
                label=task.label,
                cluster=task.cluster,
                payload=task.payload,
                created_at=now,
                updated_at=now,
                run_at=now + delay,
                retry_count=task.retry_count + 1,
                original_task_id=task.original_task_id or task.id,
                schedule_id=task.schedule_id,
                retries=task.retries,
                retries_delay=task.retries_delay,
            )
        )
        conn.execute(tasks.update().where(tasks.c.id == task.id).values(retry_task_id=new_id))
        self._event(conn, new_id, "queued", f"retry of task {task.id}")
        return new_id

    # --- tasks: the runner's side ---------------------------------------------------------------

    # The dialect's claim: one statement that picks and leases a task and RETURNS its row.
    claim_statement: ClassVar[sa.TextClause]

    def claim(
        self, runner_id: str, clusters: Sequence[str], lease_ttl: float, starvation_s: float = 300.0
    ) -> Task | None:
        now = timeutil.now()
        parameters = {
            "runner_id": runner_id,
            "lease_expires_at": now + lease_ttl,
            "starved_before": now - starvation_s,
            "now": now,
            "clusters": list(clusters),
        }
        with self._write() as conn:
            row = conn.execute(self.claim_statement, parameters).first()
            if row is None:
                return None
            self._record_claim(conn, row.id, runner_id)
            return Task.from_row(row)

    def _record_claim(self, conn: Connection, task_id: str, runner_id: str) -> None:
        """The claim's event, for dialects whose claim statement does not write it itself."""
        self._event(conn, task_id, "claimed", f"runner {runner_id}")

    def _owned(self, task_id: str, runner_id: str) -> Any:
        return sa.and_(tasks.c.id == task_id, tasks.c.runner_id == runner_id, tasks.c.status.in_(_ACTIVE))

    def mark_running(self, task_id: str, runner_id: str, start_time: float, container_id: str = "") -> bool:
        with self._write() as conn:
            result = conn.execute(
                tasks.update()
                .where(self._owned(task_id, runner_id), tasks.c.status == TaskStatus.PREPARING.value)
                .values(
                    status=TaskStatus.RUNNING.value,
                    start_time=start_time,
                    attempts=tasks.c.attempts + 1,
                    updated_at=timeutil.now(),
                )
            )
            if result.rowcount:
                self._event(
                    conn, task_id, "started", f"container {container_id[:12]} started by runner {runner_id}"
                )
            return bool(result.rowcount)

    def record_unreported_start(self, task_id: str, container_id: str, runner_id: str) -> bool:
        """Count a container start that its runner never reported (it died, or lost its lease,
        between starting the container and saying so), whatever state the task is in now.
        Returns False when that start was already counted."""
        marker = f"container {container_id[:12]} "
        with self._write() as conn:
            counted = conn.execute(
                sa.select(task_events.c.id).where(
                    task_events.c.task_id == task_id,
                    task_events.c.kind == "started",
                    task_events.c.detail.startswith(marker, autoescape=True),
                )
            ).first()
            if counted is not None:
                return False
            updated = conn.execute(
                tasks.update().where(tasks.c.id == task_id).values(attempts=tasks.c.attempts + 1)
            ).rowcount
            if updated:
                self._event(
                    conn, task_id, "started", f"{marker}started by runner {runner_id}, never reported"
                )
            return bool(updated)

    def finish(self, task_id: str, runner_id: str, outcome: TaskOutcome) -> bool:
        now = timeutil.now()
        with self._write() as conn:
            result = conn.execute(
                tasks.update()
                .where(self._owned(task_id, runner_id))
                .values(
                    status=outcome.status.value,
                    msg=outcome.msg,
                    exit_code=outcome.exit_code,
                    end_time=now,
                    lease_expires_at=None,
                    updated_at=now,
                )
            )
            if not result.rowcount:
                self._event(conn, task_id, "late_report_refused", f"runner {runner_id}: {outcome.status}")
                return False
            exited = ""
            if outcome.exit_code is not None and not outcome.msg.startswith("exit code"):
                exited = f"container exited with code {outcome.exit_code}"
            self._event(conn, task_id, str(outcome.status), "; ".join(p for p in (exited, outcome.msg) if p))
            if outcome.status in (TaskStatus.ERROR, TaskStatus.TIMEOUT):
                self._auto_retry(conn, task_id)
            return True

    def _auto_retry(self, conn: Connection, task_id: str) -> None:
        task = self._task(conn, task_id)
        code_row = conn.execute(codes.select().where(codes.c.id == task.code_id)).first()
        if code_row is None:
            return
        code = self._code_from_row(conn, code_row)
        spec = code.latest_revision.spec
        retries = spec.retries if task.retries is None else task.retries
        delay = spec.retries_delay if task.retries_delay is None else task.retries_delay
        if task.retry_count < retries:
            new_id = self._insert_retry(conn, task, code, delay)
            detail = f"automatic retry {task.retry_count + 1} of {retries}: {new_id}"
            self._event(conn, task_id, "retried", detail)

    def requeue_after_infra_failure(
        self, task_id: str, runner_id: str, reason: str, budget: int, delay: float, max_delay: float = 60.0
    ) -> Task | None:
        with self._write() as conn:
            row = conn.execute(
                tasks.select().where(self._owned(task_id, runner_id)).with_for_update()
            ).first()
            if row is None:
                self._event(conn, task_id, "late_report_refused", f"runner {runner_id}: infrastructure error")
                return None
            self._requeue_or_fail(conn, Task.from_row(row), reason, budget, delay, max_delay)
            return self._task(conn, task_id)

    def release(self, task_id: str, runner_id: str, reason: str) -> bool:
        """Hand a task back to the queue at its old place, without spending its retry budget:
        its runner cannot run anything now (its engine is unreachable), through no fault of the
        task. A cancel requested meanwhile ends it as cancelled."""
        now = timeutil.now()
        with self._write() as conn:
            row = conn.execute(
                tasks.select().where(self._owned(task_id, runner_id)).with_for_update()
            ).first()
            if row is None:
                return False
            if row.cancel_requested:
                values: dict[str, Any] = dict(
                    status=TaskStatus.CANCELLED.value, msg=CANCELLED_MSG, end_time=now
                )
                kind = "cancelled"
            else:
                values = dict(
                    status=TaskStatus.QUEUED.value, msg=f"waiting: {reason}", start_time=None, runner_id=None
                )
                kind = "released"
            conn.execute(
                tasks.update()
                .where(self._owned(task_id, runner_id))
                .values(lease_expires_at=None, updated_at=now, **values)
            )
            self._event(conn, task_id, kind, f"runner {runner_id}: {reason}")
            return True

    def _requeue_or_fail(
        self, conn: Connection, task: Task, reason: str, budget: int, delay: float, max_delay: float
    ) -> None:
        now = timeutil.now()
        owned = sa.and_(
            tasks.c.id == task.id, tasks.c.runner_id == task.runner_id, tasks.c.status.in_(_ACTIVE)
        )
        attempts = task.infra_attempts + 1
        if task.cancel_requested:
            values: dict[str, Any] = dict(status=TaskStatus.CANCELLED.value, msg=CANCELLED_MSG, end_time=now)
            kind = "cancelled"
        elif attempts > budget:
            msg = f"infrastructure error: {reason} (gave up after {attempts} attempts)"
            values = dict(status=TaskStatus.ERROR.value, msg=msg, end_time=now)
            kind = "error"
        else:
            backoff = min(delay * 2 ** (attempts - 1), max_delay)
            values = dict(
                status=TaskStatus.QUEUED.value,
                msg=f"retrying after infrastructure error: {reason}",
                run_at=now + backoff,
                start_time=None,
                runner_id=None,
            )
            kind = "infra_retry"
        conn.execute(
            tasks.update()
            .where(owned)
            .values(infra_attempts=attempts, lease_expires_at=None, updated_at=now, **values)
        )
        self._event(conn, task.id, kind, f"attempt {attempts}: {reason}")

    def heartbeat(self, runner_id: str, task_ids: Iterable[str], lease_ttl: float) -> set[str]:
        wanted = list(task_ids)
        if not wanted:
            return set()
        with self._write() as conn:
            condition = sa.and_(
                tasks.c.id.in_(wanted), tasks.c.runner_id == runner_id, tasks.c.status.in_(_ACTIVE)
            )
            conn.execute(tasks.update().where(condition).values(lease_expires_at=timeutil.now() + lease_ttl))
            return {r.id for r in conn.execute(sa.select(tasks.c.id).where(condition)).all()}

    def cancel_requested(self, runner_id: str) -> set[str]:
        with self._read() as conn:
            rows = conn.execute(
                sa.select(tasks.c.id).where(
                    tasks.c.runner_id == runner_id,
                    tasks.c.status.in_(_ACTIVE),
                    tasks.c.cancel_requested.is_(True),
                )
            ).all()
        return {r.id for r in rows}

    def expire_leases(self, budget: int, delay: float, max_delay: float = 60.0) -> list[Task]:
        now = timeutil.now()
        expired: list[Task] = []
        with self._write() as conn:
            rows = conn.execute(
                tasks.select()
                .where(tasks.c.status.in_(_ACTIVE), tasks.c.lease_expires_at < now)
                # Several housekeepers (PostgreSQL): each expired lease is handled by one of them.
                .with_for_update(skip_locked=True)
            ).all()
            for row in rows:
                task = Task.from_row(row)
                reason = f"runner {task.runner_id} lost its lease"
                self._requeue_or_fail(conn, task, reason, budget, delay, max_delay)
                expired.append(self._task(conn, task.id))
        return expired

    def leased_task_ids(self, runner_id: str) -> set[str]:
        with self._read() as conn:
            rows = conn.execute(
                sa.select(tasks.c.id).where(tasks.c.runner_id == runner_id, tasks.c.status.in_(_ACTIVE))
            ).all()
        return {r.id for r in rows}

    def active_task_ids(self) -> set[str]:
        with self._read() as conn:
            return {
                r.id for r in conn.execute(sa.select(tasks.c.id).where(tasks.c.status.in_(_ACTIVE))).all()
            }

    # --- logs and events ------------------------------------------------------------------------

    def append_log(self, task_id: str, data: bytes, output_bytes: int | None = None) -> None:
        """Append to the task's log; ``output_bytes`` records how much of the container's
        output has been consumed, for a runner that re-adopts the container later."""
        with self._write() as conn:
            start = conn.execute(sa.select(tasks.c.log_size).where(tasks.c.id == task_id)).scalar_one()
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

    def add_event(self, task_id: str, kind: str, detail: str = "") -> None:
        with self._write() as conn:
            self._event(conn, task_id, kind, detail)

    def list_events(self, task_id: str) -> list[TaskEvent]:
        with self._read() as conn:
            rows = conn.execute(
                task_events.select().where(task_events.c.task_id == task_id).order_by(task_events.c.id)
            ).all()
        return [TaskEvent(at=r.at, kind=r.kind, detail=r.detail) for r in rows]
