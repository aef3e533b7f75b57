"""Projects and tokens: who may call the API, and for which project.

A token is 32 random bytes (``secrets``), handed out once; the store keeps only its SHA-256
digest. ``authenticate`` looks the digest up through the unique index. That lookup is safe from
timing attacks: what a caller controls is the token, and the comparison the database makes (and
may take more or less time over) is between *digests*; learning how many leading characters of
the digest of a guess match a stored digest does not help to find a token with that digest
(that would need SHA-256 preimages). The fetched row's digest is still compared again with
``hmac.compare_digest``, so no code path compares secrets with ``==``."""

from __future__ import annotations

import dataclasses
import hmac
import logging
import threading
import time
from typing import Any

import sqlalchemy as sa

from .. import ids, timeutil
from ..errors import NotFound
from ..models import Project, TokenInfo
from .schema import projects, tokens
from .transactions import Transactional

log = logging.getLogger("dockworker.store")

# ``last_used_at`` moves at most once per token and minute, and is written in batches at most
# every few seconds: authentication stays a read, and a failed write (a full disk) never fails
# the request that authenticated.
LAST_USED_RESOLUTION_S = 60.0
LAST_USED_FLUSH_S = 5.0


def _project_from_row(row: Any) -> Project:
    return Project(id=row.id, name=row.name, created_at=row.created_at)


def _token_from_row(row: Any) -> TokenInfo:
    return TokenInfo(
        id=row.id,
        project_id=row.project_id,
        name=row.name,
        created_at=row.created_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
        last_used_at=row.last_used_at,
    )


class LastUsed:
    """Token uses not written yet: at most one moment per token, the latest."""

    def __init__(self, interval_s: float = LAST_USED_FLUSH_S) -> None:
        self.interval_s = interval_s  # at most one write per interval
        self._lock = threading.Lock()
        self._pending: dict[str, float] = {}
        self._next_flush = 0.0  # monotonic
        self.flushing = threading.Lock()
        self.failing = False

    def note(self, token_id: str, moment: float) -> None:
        with self._lock:
            self._pending[token_id] = max(moment, self._pending.get(token_id, moment))

    def seen(self, info: TokenInfo) -> TokenInfo:
        """The token's record with its latest use, written or not."""
        with self._lock:
            pending = self._pending.get(info.id)
        if pending is None or (info.last_used_at is not None and info.last_used_at >= pending):
            return info
        return dataclasses.replace(info, last_used_at=pending)

    def take_if_due(self, force: bool = False) -> dict[str, float]:
        with self._lock:
            if not self._pending or (not force and time.monotonic() < self._next_flush):
                return {}
            self._next_flush = time.monotonic() + self.interval_s
            taken, self._pending = self._pending, {}
            return taken

    def put_back(self, failed: dict[str, float]) -> None:
        with self._lock:
            for token_id, moment in failed.items():
                self._pending[token_id] = max(moment, self._pending.get(token_id, moment))


class TenancyQueries(Transactional):
    def __init__(self) -> None:
        super().__init__()
        self._last_used = LastUsed()

    # --- projects -------------------------------------------------------------------------------

    def create_project(self, name: str) -> Project:
        project = Project(id=ids.new_id(), name=name, created_at=timeutil.now())
        with self._write() as conn:
            conn.execute(projects.insert().values(id=project.id, name=name, created_at=project.created_at))
        return project

    def get_project(self, project_id: str) -> Project:
        with self._read() as conn:
            row = conn.execute(projects.select().where(projects.c.id == project_id)).first()
        if row is None:
            raise NotFound("Project not found")
        return _project_from_row(row)

    def list_projects(self) -> list[Project]:
        with self._read() as conn:
            rows = conn.execute(projects.select().order_by(projects.c.created_at, projects.c.id)).all()
        return [_project_from_row(r) for r in rows]

    # --- tokens ---------------------------------------------------------------------------------

    def create_token(
        self, project_id: str | None, name: str, expires_at: float | None = None
    ) -> tuple[str, TokenInfo]:
        """A new token for the project (``None``: an admin token). Returns the secret, which is
        not kept anywhere, and the token's record."""
        if project_id is not None:
            self.get_project(project_id)
        secret = ids.new_token()
        info = TokenInfo(
            id=ids.new_id(),
            project_id=project_id,
            name=name,
            created_at=timeutil.now(),
            expires_at=expires_at,
        )
        with self._write() as conn:
            conn.execute(
                tokens.insert().values(
                    id=info.id,
                    project_id=project_id,
                    digest=ids.token_digest(secret),
                    name=name,
                    created_at=info.created_at,
                    expires_at=expires_at,
                )
            )
        return secret, info

    def authenticate(self, token: str) -> TokenInfo | None:
        """The token's record, or None when it is unknown, revoked or expired. Revocation and
        expiry take effect at once: nothing is cached."""
        digest = ids.token_digest(token)
        now = timeutil.now()
        with self._read() as conn:
            row = conn.execute(tokens.select().where(tokens.c.digest == digest)).first()
        if row is None or not hmac.compare_digest(str(row.digest), digest):
            return None
        info = self._last_used.seen(_token_from_row(row))
        if not info.usable_at(now):
            return None
        if info.last_used_at is None or now - info.last_used_at >= LAST_USED_RESOLUTION_S:
            self._last_used.note(info.id, now)
        self._flush_last_used(force=False)
        return info

    def _flush_last_used(self, force: bool = True) -> None:
        """Write the pending token uses in one transaction. A failure is logged (once until the
        next success) and the uses stay pending for the next attempt."""
        last_used = self._last_used
        if not last_used.flushing.acquire(blocking=force):
            return
        try:
            pending = last_used.take_if_due(force)
            if not pending:
                return
            try:
                with self._write() as conn:
                    conn.execute(
                        tokens.update()
                        .where(tokens.c.id == sa.bindparam("token_id"))
                        .values(last_used_at=sa.bindparam("moment")),
                        [{"token_id": token_id, "moment": moment} for token_id, moment in pending.items()],
                    )
            except Exception as exc:
                last_used.put_back(pending)
                if not last_used.failing:
                    log.warning(
                        "store.last_used_not_written: %s; retrying in %.0f s", exc, last_used.interval_s
                    )
                last_used.failing = True
                return
            if last_used.failing:
                log.info("store.last_used_written again")
            last_used.failing = False
        finally:
            last_used.flushing.release()

    def list_tokens(self, project_id: str | None) -> list[TokenInfo]:
        """A project's tokens (``None``: the admin tokens), revoked and expired ones included,
        oldest first. Secrets are not stored, so none is returned."""
        condition = tokens.c.project_id.is_(None) if project_id is None else tokens.c.project_id == project_id
        with self._read() as conn:
            rows = conn.execute(tokens.select().where(condition).order_by(tokens.c.created_at, tokens.c.id))
            return [self._last_used.seen(_token_from_row(r)) for r in rows.all()]

    def get_token(self, token_id: str) -> TokenInfo:
        with self._read() as conn:
            row = conn.execute(tokens.select().where(tokens.c.id == token_id)).first()
        if row is None:
            raise NotFound("Token not found")
        return self._last_used.seen(_token_from_row(row))

    def revoke_token(self, token_id: str) -> TokenInfo:
        """Revoke the token now (a revoked token stays revoked, with its first revocation time)."""
        with self._write() as conn:
            conn.execute(
                tokens.update()
                .where(tokens.c.id == token_id, tokens.c.revoked_at.is_(None))
                .values(revoked_at=timeutil.now())
            )
            row = conn.execute(tokens.select().where(tokens.c.id == token_id)).first()
        if row is None:
            raise NotFound("Token not found")
        return self._last_used.seen(_token_from_row(row))
