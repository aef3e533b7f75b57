"""Projects and tokens: who may call the API, and for which project.

A token is 32 random bytes (``secrets``), handed out once; the store keeps only its SHA-256
digest. ``authenticate`` looks the digest up through the unique index. That lookup is safe from
timing attacks: what a caller controls is the token, and the comparison the database makes (and
may take more or less time over) is between *digests*; learning how many leading characters of
the digest of a guess match a stored digest does not help to find a token with that digest
(that would need SHA-256 preimages). The fetched row's digest is still compared again with
``hmac.compare_digest``, so no code path compares secrets with ``==``."""

from __future__ import annotations

import hmac
from typing import Any

from .. import ids, timeutil
from ..errors import NotFound
from ..models import Project, TokenInfo
from .schema import projects, tokens
from .transactions import Transactional

# ``last_used_at`` is written at most once per token and minute: authentication stays a read.
LAST_USED_RESOLUTION_S = 60.0
MAX_TOKEN_LIFETIME_S = 10 * 365 * 86400


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


class TenancyQueries(Transactional):
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
        info = _token_from_row(row)
        if not info.usable_at(now):
            return None
        if info.last_used_at is None or now - info.last_used_at >= LAST_USED_RESOLUTION_S:
            with self._write() as conn:
                conn.execute(tokens.update().where(tokens.c.id == info.id).values(last_used_at=now))
        return info

    def list_tokens(self, project_id: str | None) -> list[TokenInfo]:
        """A project's tokens (``None``: the admin tokens), revoked and expired ones included,
        oldest first. Secrets are not stored, so none is returned."""
        condition = tokens.c.project_id.is_(None) if project_id is None else tokens.c.project_id == project_id
        with self._read() as conn:
            rows = conn.execute(tokens.select().where(condition).order_by(tokens.c.created_at, tokens.c.id))
            return [_token_from_row(r) for r in rows.all()]

    def get_token(self, token_id: str) -> TokenInfo:
        with self._read() as conn:
            row = conn.execute(tokens.select().where(tokens.c.id == token_id)).first()
        if row is None:
            raise NotFound("Token not found")
        return _token_from_row(row)

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
        return _token_from_row(row)
