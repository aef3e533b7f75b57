"""What the API's runner routes need beyond the runner-side queries every runner uses: the
sessions of remote runners (one live process per runner id), and lookups confined to what a
cluster token may reach (its cluster's tasks, and among them the calling runner's leases)."""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from .. import ids, timeutil
from ..errors import AlreadyRunning, Conflict, NotFound
from ..models import CodeRevision, Task
from .codes_sql import _REVISION_COLUMNS, revision_from_row
from .schema import code_revisions, runner_sessions, task_log_chunks, tasks
from .transactions import Transactional
from .transitions import held_by, is_active, leased


class LeaseLost(Conflict):
    """The task is no longer leased to this runner: nothing was written."""


class RemoteRunnerQueries(Transactional):
    # --- sessions -------------------------------------------------------------------------------

    def open_runner_session(
        self, runner_id: str, cluster_id: str, host: str, ttl: float, resume: str | None = None
    ) -> str:
        """Hold ``runner_id`` for the calling process; returns the session's secret (kept as a
        digest). AlreadyRunning while another live session holds it, unless ``resume`` is that
        session's secret (the same runner restarted on its host, which kept it)."""
        secret = ids.new_token()
        now = timeutil.now()
        values = dict(
            cluster_id=cluster_id,
            secret_digest=ids.token_digest(secret),
            host=host,
            opened_at=now,
            expires_at=now + ttl,
        )
        with self._write() as conn:
            row = conn.execute(
                runner_sessions.select().where(runner_sessions.c.runner_id == runner_id).with_for_update()
            ).first()
            if row is None:
                try:
                    with conn.begin_nested():
                        conn.execute(runner_sessions.insert().values(runner_id=runner_id, **values))
                except IntegrityError:  # another process opened it meanwhile
                    raise AlreadyRunning(
                        f"runner {runner_id!r} is already running; stop it first, or give this one"
                        " another --runner-id"
                    ) from None
                return secret
            resumed = resume is not None and hmac.compare_digest(ids.token_digest(resume), row.secret_digest)
            if row.expires_at > now and not resumed:
                raise AlreadyRunning(
                    f"runner {runner_id!r} is already running (on {row.host}, heard of"
                    f" {now - (row.expires_at - ttl):.0f} s ago); stop it first, or give this one"
                    " another --runner-id"
                )
            conn.execute(
                runner_sessions.update().where(runner_sessions.c.runner_id == runner_id).values(**values)
            )
        return secret

    def check_runner_session(self, runner_id: str, cluster_id: str, secret: str) -> bool:
        """Whether ``secret`` is the runner's current session, in that cluster. An expired session
        that nobody took over still counts: its runner was only cut off for a while."""
        with self._read() as conn:
            row = conn.execute(
                sa.select(runner_sessions.c.secret_digest, runner_sessions.c.cluster_id).where(
                    runner_sessions.c.runner_id == runner_id
                )
            ).first()
        return (
            row is not None
            and row.cluster_id == cluster_id
            and hmac.compare_digest(ids.token_digest(secret), row.secret_digest)
        )

    def renew_runner_session(self, runner_id: str, secret: str, ttl: float) -> bool:
        with self._write() as conn:
            return bool(
                conn.execute(
                    runner_sessions.update()
                    .where(
                        runner_sessions.c.runner_id == runner_id,
                        runner_sessions.c.secret_digest == ids.token_digest(secret),
                    )
                    .values(expires_at=timeutil.now() + ttl)
                ).rowcount
            )

    def close_runner_session(self, runner_id: str, secret: str) -> None:
        with self._write() as conn:
            conn.execute(
                runner_sessions.delete().where(
                    runner_sessions.c.runner_id == runner_id,
                    runner_sessions.c.secret_digest == ids.token_digest(secret),
                )
            )

    # --- what a runner of a cluster may read ------------------------------------------------------

    def leased_task(self, task_id: str, runner_id: str) -> Task:
        """The task, while it is leased to the runner; NotFound otherwise."""
        with self._read() as conn:
            row = conn.execute(tasks.select().where(leased(task_id, runner_id))).first()
        if row is None:
            raise NotFound("Task not found among this runner's leased tasks")
        return Task.from_row(row)

    def _leased_revision_row(self, conn: Any, columns: list[Any], revision_id: str, runner_id: str) -> Any:
        uses = sa.select(tasks.c.id).where(tasks.c.revision_id == revision_id, held_by(runner_id))
        return conn.execute(
            sa.select(*columns).where(code_revisions.c.id == revision_id, sa.exists(uses))
        ).first()

    def leased_revision(self, revision_id: str, runner_id: str) -> CodeRevision:
        """A code revision that a task leased to the runner runs; NotFound otherwise."""
        with self._read() as conn:
            row = self._leased_revision_row(conn, _REVISION_COLUMNS, revision_id, runner_id)
        if row is None:
            raise NotFound("Code revision not found among this runner's leased tasks")
        return revision_from_row(row)

    def leased_revision_archive(self, revision_id: str, runner_id: str) -> bytes | None:
        with self._read() as conn:
            row = self._leased_revision_row(conn, [code_revisions.c.archive], revision_id, runner_id)
        if row is None:
            raise NotFound("Code revision not found among this runner's leased tasks")
        return None if row.archive is None else bytes(row.archive)

    def cluster_task_ids(self, task_ids: Iterable[str], cluster_id: str, active_only: bool) -> set[str]:
        """Those of ``task_ids`` that are tasks of the cluster (and active, if asked)."""
        wanted = sorted(set(task_ids))
        found: set[str] = set()
        with self._read() as conn:
            for start in range(0, len(wanted), 500):
                condition = sa.and_(
                    tasks.c.id.in_(wanted[start : start + 500]), tasks.c.cluster == cluster_id
                )
                if active_only:
                    condition = sa.and_(condition, is_active())
                found.update(r.id for r in conn.execute(sa.select(tasks.c.id).where(condition)))
        return found

    # --- the log, written once whatever the retries -----------------------------------------------

    def append_log_at(
        self, task_id: str, runner_id: str, start: int, data: bytes, output_bytes: int | None
    ) -> int:
        """Append ``data``, which the runner has as its log from byte ``start`` on, unless it is
        already there (a retried request): the log's size after. LeaseLost when the task is not
        leased to the runner."""
        with self._write() as conn:
            # the task's row locked (PostgreSQL): a retry racing its first try waits for it
            locked = sa.select(tasks.c.log_size).where(leased(task_id, runner_id)).with_for_update()
            size = conn.execute(locked).scalar()
            if size is None:
                raise LeaseLost()
            if start < size:
                if size >= start + len(data):
                    return int(size)  # written by an earlier try of this request
                # an earlier try wrote the beginning (its answer was lost) and the runner has
                # more since: only what is new
                data = data[size - start :]
            seq = conn.execute(
                sa.select(sa.func.coalesce(sa.func.max(task_log_chunks.c.seq) + 1, 0)).where(
                    task_log_chunks.c.task_id == task_id
                )
            ).scalar_one()
            conn.execute(task_log_chunks.insert().values(task_id=task_id, seq=seq, start=size, data=data))
            values: dict[str, Any] = {"log_size": size + len(data)}
            if output_bytes is not None:
                values["output_bytes"] = output_bytes
            conn.execute(tasks.update().where(tasks.c.id == task_id).values(**values))
            return int(size) + len(data)
