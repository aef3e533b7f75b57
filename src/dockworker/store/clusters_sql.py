"""Clusters (IronWorker's ``/2/clusters``): their tokens, who may use them, and the check that a
task or schedule names a cluster its project may use.

A cluster belongs to one project and may be shared with others. Its token (a secret handed out
once, kept as a SHA-256 digest, as project tokens are) authenticates its remote runners and
nothing else. Tasks name a cluster by its id in ``cluster``; a value that is not a cluster's id
is a plain name served by runners attached to the store (``dockworker runner --cluster NAME``),
as before clusters existed."""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from .. import ids, payload_crypto, timeutil
from ..errors import ClientError, Conflict, Forbidden, NotFound
from ..models import Cluster, ClusterChanges
from ..states import ACTIVE, TaskStatus
from .schema import cluster_shares, clusters, projects, schedules, tasks
from .transactions import Transactional

_ACTIVE = sorted(s.value for s in ACTIVE | {TaskStatus.QUEUED})
NOT_FOUND = "Cluster not found"


def _cluster_from_row(row: Any, shared_with: Iterable[str]) -> Cluster:
    return Cluster(
        id=row.id,
        project_id=row.project_id,
        name=row.name,
        description=row.description,
        memory_mb=row.memory_mb,
        public_key=row.public_key,
        shared_with=tuple(sorted(shared_with)),
        token_active=row.token_digest is not None,
        token_created_at=row.token_created_at,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _visible_to(project_id: str | None) -> sa.ColumnElement[bool]:
    """Clusters a project may see: its own and those shared with it (``None``: every one)."""
    if project_id is None:
        return sa.true()
    shared = sa.select(cluster_shares.c.cluster_id).where(cluster_shares.c.project_id == project_id)
    return sa.or_(clusters.c.project_id == project_id, clusters.c.id.in_(shared))


def _load(conn: Connection, rows: Sequence[Any]) -> list[Cluster]:
    if not rows:
        return []
    shares: dict[str, list[str]] = {r.id: [] for r in rows}
    for share in conn.execute(
        sa.select(cluster_shares.c.cluster_id, cluster_shares.c.project_id).where(
            cluster_shares.c.cluster_id.in_(list(shares))
        )
    ):
        shares[share.cluster_id].append(share.project_id)
    return [_cluster_from_row(r, shares[r.id]) for r in rows]


def check_clusters(conn: Connection, project_id: str, payloads_by_cluster: dict[str, list[str]]) -> None:
    """Refuse (before anything is written) a task or schedule naming a cluster its project may
    not use, or a clear payload for a cluster that takes only encrypted ones."""
    named = [name for name in payloads_by_cluster if ids.is_id(name)]
    if not named:
        return
    found = _load(conn, conn.execute(clusters.select().where(clusters.c.id.in_(named))).all())
    for cluster in found:
        if not cluster.usable_by(project_id):
            raise NotFound(f"{NOT_FOUND}: {cluster.id}")
        if cluster.public_key is not None:
            for payload in payloads_by_cluster[cluster.id]:
                if not payload_crypto.is_envelope(payload):
                    raise ClientError(
                        f"cluster {cluster.name!r} ({cluster.id}) takes encrypted payloads only: encrypt"
                        " them with its public key (dockworker queue --encrypt, or see docs/deployment.md)"
                    )


class ClusterQueries(Transactional):
    def create_cluster(
        self,
        project_id: str,
        name: str,
        memory_mb: int,
        description: str | None = None,
        public_key: str | None = None,
    ) -> tuple[str, Cluster]:
        """A new cluster of the project and its token (returned once, kept as a digest)."""
        if public_key is not None:
            payload_crypto.load_public_key(public_key)
        secret = ids.new_token()
        now = timeutil.now()
        cluster_id = ids.new_id()
        with self._write() as conn:
            if conn.execute(sa.select(projects.c.id).where(projects.c.id == project_id)).first() is None:
                raise NotFound("Project not found")
            if self._named(conn, project_id, name) is not None:
                raise Conflict(f"the project already has a cluster named {name!r}")
            conn.execute(
                clusters.insert().values(
                    id=cluster_id,
                    project_id=project_id,
                    name=name,
                    description=description,
                    memory_mb=memory_mb,
                    public_key=public_key,
                    token_digest=ids.token_digest(secret),
                    token_created_at=now,
                    created_at=now,
                    updated_at=now,
                )
            )
            return secret, self._get(conn, None, cluster_id)

    @staticmethod
    def _named(conn: Connection, project_id: str, name: str) -> str | None:
        found = conn.execute(
            sa.select(clusters.c.id).where(clusters.c.project_id == project_id, clusters.c.name == name)
        ).scalar()
        return None if found is None else str(found)

    @staticmethod
    def _get(conn: Connection, project_id: str | None, cluster_id: str) -> Cluster:
        rows = conn.execute(
            clusters.select().where(clusters.c.id == cluster_id, _visible_to(project_id))
        ).all()
        if not rows:
            raise NotFound(NOT_FOUND)
        return _load(conn, rows)[0]

    def _owned(self, conn: Connection, project_id: str | None, cluster_id: str) -> Cluster:
        """The cluster, when ``project_id`` owns it (``None``: an admin, who may change any).
        A project it is only shared with may use it, not change it: 403."""
        cluster = self._get(conn, project_id, cluster_id)
        if project_id is not None and cluster.project_id != project_id:
            raise Forbidden("only the project that owns a cluster may change it")
        return cluster

    def get_cluster(self, project_id: str | None, cluster_id: str) -> Cluster:
        """A cluster the project owns or is shared (``None``: any). NotFound otherwise."""
        with self._read() as conn:
            return self._get(conn, project_id, cluster_id)

    def list_clusters(self, project_id: str | None) -> list[Cluster]:
        with self._read() as conn:
            rows = conn.execute(
                clusters.select()
                .where(_visible_to(project_id))
                .order_by(clusters.c.created_at, clusters.c.id)
            ).all()
            return _load(conn, rows)

    def update_cluster(self, project_id: str | None, cluster_id: str, changes: ClusterChanges) -> Cluster:
        if changes.public_key is not None:
            payload_crypto.load_public_key(changes.public_key)
        with self._write() as conn:
            cluster = self._owned(conn, project_id, cluster_id)
            values: dict[str, Any] = {"updated_at": timeutil.now()}
            if changes.name is not None and changes.name != cluster.name:
                if self._named(conn, cluster.project_id, changes.name) is not None:
                    raise Conflict(f"the project already has a cluster named {changes.name!r}")
                values["name"] = changes.name
            if changes.description is not None:
                values["description"] = changes.description or None
            if changes.memory_mb is not None:
                values["memory_mb"] = changes.memory_mb
            if changes.clear_public_key:
                values["public_key"] = None
            elif changes.public_key is not None:
                values["public_key"] = changes.public_key
            conn.execute(clusters.update().where(clusters.c.id == cluster_id).values(**values))
            return self._get(conn, None, cluster_id)

    def delete_cluster(self, project_id: str | None, cluster_id: str) -> None:
        """Refused (Conflict) while tasks or schedules of any project still use the cluster."""
        with self._write() as conn:
            self._owned(conn, project_id, cluster_id)
            active = conn.execute(
                sa.select(sa.func.count())
                .select_from(tasks)
                .where(tasks.c.cluster == cluster_id, tasks.c.status.in_(_ACTIVE))
            ).scalar_one()
            if active:
                raise Conflict(
                    f"the cluster still has {active} queued or running task(s): cancel them or let them end"
                )
            scheduled = conn.execute(
                sa.select(sa.func.count())
                .select_from(schedules)
                .where(schedules.c.cluster == cluster_id, schedules.c.status == "scheduled")
            ).scalar_one()
            if scheduled:
                raise Conflict(
                    f"{scheduled} schedule(s) still queue tasks for the cluster: cancel them first"
                )
            conn.execute(clusters.delete().where(clusters.c.id == cluster_id))

    def share_cluster(self, project_id: str | None, cluster_id: str, with_project: str) -> Cluster:
        with self._write() as conn:
            cluster = self._owned(conn, project_id, cluster_id)
            if conn.execute(sa.select(projects.c.id).where(projects.c.id == with_project)).first() is None:
                raise NotFound("Project not found")
            if with_project != cluster.project_id and with_project not in cluster.shared_with:
                conn.execute(
                    cluster_shares.insert().values(
                        cluster_id=cluster_id, project_id=with_project, created_at=timeutil.now()
                    )
                )
            return self._get(conn, None, cluster_id)

    def unshare_cluster(self, project_id: str | None, cluster_id: str, with_project: str) -> Cluster:
        """The project may queue nothing more there; its tasks already queued still run."""
        with self._write() as conn:
            self._owned(conn, project_id, cluster_id)
            conn.execute(
                cluster_shares.delete().where(
                    cluster_shares.c.cluster_id == cluster_id, cluster_shares.c.project_id == with_project
                )
            )
            return self._get(conn, None, cluster_id)

    def rotate_cluster_token(self, project_id: str | None, cluster_id: str) -> tuple[str, Cluster]:
        """A new token; the old one stops working at once (runners using it are refused at
        their next call)."""
        secret = ids.new_token()
        with self._write() as conn:
            self._owned(conn, project_id, cluster_id)
            now = timeutil.now()
            conn.execute(
                clusters.update()
                .where(clusters.c.id == cluster_id)
                .values(token_digest=ids.token_digest(secret), token_created_at=now, updated_at=now)
            )
            return secret, self._get(conn, None, cluster_id)

    def revoke_cluster_token(self, project_id: str | None, cluster_id: str) -> Cluster:
        """No token works for the cluster until a new one is made (``rotate_cluster_token``)."""
        with self._write() as conn:
            self._owned(conn, project_id, cluster_id)
            conn.execute(
                clusters.update()
                .where(clusters.c.id == cluster_id)
                .values(token_digest=None, token_created_at=None, updated_at=timeutil.now())
            )
            return self._get(conn, None, cluster_id)

    def authenticate_cluster(self, token: str) -> Cluster | None:
        """The cluster whose current token this is, or None. Nothing is cached: a rotated or
        revoked token is refused at once."""
        digest = ids.token_digest(token)
        with self._read() as conn:
            rows = conn.execute(clusters.select().where(clusters.c.token_digest == digest)).all()
            if not rows or not hmac.compare_digest(str(rows[0].token_digest), digest):
                return None
            return _load(conn, rows)[0]

    def cluster_counts(self, cluster_id: str) -> dict[str, int]:
        """The cluster's active tasks per status (a rare read: no index serves it)."""
        with self._read() as conn:
            rows = conn.execute(
                sa.select(tasks.c.status, sa.func.count())
                .where(tasks.c.cluster == cluster_id, tasks.c.status.in_(_ACTIVE))
                .group_by(tasks.c.status)
            ).all()
        return {str(status): int(count) for status, count in rows}
