"""Clusters (IronWorker v2's ``/2/clusters``): groups of runners that run anywhere and reach
only the API, with a token of their own.

A project token manages its project's clusters and sees those shared with it (which it may
queue tasks to, but not change); an admin token sees and manages every cluster, and names the
owner with ``project_id`` when it creates one. A cluster's token is shown when the cluster is
made and when it is rotated, never again."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Path

from .. import ids, timeutil
from ..errors import ClientError, NotFound
from ..models import Cluster, ClusterChanges, TokenInfo
from .deps import CallerDep, ServicesDep
from .runners import alive_horizon
from .schemas import Strict, check_name

router = APIRouter(tags=["clusters"])

MB = 1024 * 1024
DEFAULT_MEMORY_MB = 512
ClusterId = Annotated[str, Path(max_length=100)]


class ClusterIn(Strict):
    name: str
    memory: int | None = None  # bytes per task, as IronWorker's field
    memory_mb: int | None = None
    description: str | None = None
    public_key: str | None = None
    project_id: str | None = None  # the owner, when an admin token creates it


class ClusterUpdate(Strict):
    name: str | None = None
    memory: int | None = None
    memory_mb: int | None = None
    description: str | None = None
    public_key: str | None = None  # "" removes the key


class ShareIn(Strict):
    project_id: str


def _memory_mb(memory: int | None, memory_mb: int | None) -> int | None:
    if memory is not None and memory_mb is not None:
        raise ClientError("give memory (bytes) or memory_mb, not both")
    value = memory_mb if memory is None else -(-memory // MB)
    if value is not None and not 16 <= value <= 1024 * 1024:
        raise ClientError("memory must be between 16 MB and 1 TB")
    return value


def _name(value: str | None) -> str | None:
    if value is None:
        return None
    if not 1 <= len(value) <= 100:
        raise ClientError("name must be 1 to 100 characters")
    try:
        return check_name(value)
    except ValueError as exc:
        raise ClientError(f"name {exc}") from None


def _description(value: str | None) -> str | None:
    if value is not None and len(value) > 1000:
        raise ClientError("description may be at most 1000 characters")
    return value


def _scope(who: TokenInfo) -> str | None:
    return who.project_id


def cluster_json(cluster: Cluster, who: TokenInfo, token: str | None = None) -> dict[str, Any]:
    owner = who.project_id is None or who.project_id == cluster.project_id
    data: dict[str, Any] = {
        "id": cluster.id,
        "name": cluster.name,
        "description": cluster.description,
        "project_id": cluster.project_id,
        "memory": cluster.memory_mb * MB,
        "memory_mb": cluster.memory_mb,
        "public_key": cluster.public_key,
        "encrypted_payloads": cluster.public_key is not None,
        "token_active": cluster.token_active,
        "token_created_at": timeutil.rfc3339(cluster.token_created_at),
        "created_at": timeutil.rfc3339(cluster.created_at),
        "updated_at": timeutil.rfc3339(cluster.updated_at),
        "owner": owner,
    }
    if owner:  # a project the cluster is shared with does not learn who else uses it
        data["shared_to"] = list(cluster.shared_with)
    if token is not None:
        data["token"] = token
    return data


@router.get("/2/clusters")
def list_clusters(svc: ServicesDep, who: CallerDep) -> dict[str, Any]:
    """The project's clusters and those shared with it (an admin token: every cluster)."""
    return {"clusters": [cluster_json(c, who) for c in svc.store.list_clusters(_scope(who))]}


@router.post("/2/clusters")
def create_cluster(svc: ServicesDep, who: CallerDep, body: ClusterIn) -> dict[str, Any]:
    """A new cluster, and its token, shown this once: its runners start with it
    (``dockworker runner --api URL --cluster-id ID --cluster-token TOKEN``)."""
    if who.project_id is None:
        if body.project_id is None:
            raise ClientError("an admin token names the cluster's project: project_id")
        owner = body.project_id
    else:
        if body.project_id not in (None, who.project_id):
            raise NotFound("Project not found")
        owner = who.project_id
    token, cluster = svc.store.create_cluster(
        owner,
        _name(body.name) or "",
        _memory_mb(body.memory, body.memory_mb) or DEFAULT_MEMORY_MB,
        _description(body.description),
        body.public_key or None,
    )
    return {"msg": "Created", "cluster": cluster_json(cluster, who, token)}


@router.get("/2/clusters/{cluster_id}")
def get_cluster(svc: ServicesDep, who: CallerDep, cluster_id: ClusterId) -> dict[str, Any]:
    return {"cluster": cluster_json(svc.store.get_cluster(_scope(who), cluster_id), who)}


@router.put("/2/clusters/{cluster_id}")
def update_cluster(
    svc: ServicesDep, who: CallerDep, cluster_id: ClusterId, body: ClusterUpdate
) -> dict[str, Any]:
    """Change the name, memory, description or public key (``""`` removes it); the owner only."""
    changes = ClusterChanges(
        name=_name(body.name),
        description=_description(body.description),
        memory_mb=_memory_mb(body.memory, body.memory_mb),
        public_key=body.public_key or None,
        clear_public_key=body.public_key == "",
    )
    cluster = svc.store.update_cluster(_scope(who), cluster_id, changes)
    return {"msg": "Updated", "cluster": cluster_json(cluster, who)}


@router.delete("/2/clusters/{cluster_id}")
def delete_cluster(svc: ServicesDep, who: CallerDep, cluster_id: ClusterId) -> dict[str, str]:
    """Refused (409) while tasks or schedules still use it."""
    svc.store.delete_cluster(_scope(who), cluster_id)
    return {"msg": "Deleted"}


@router.post("/2/clusters/{cluster_id}/share")
def share_cluster(svc: ServicesDep, who: CallerDep, cluster_id: ClusterId, body: ShareIn) -> dict[str, Any]:
    """Let another project queue tasks to the cluster."""
    if not ids.is_id(body.project_id):
        raise NotFound("Project not found")
    cluster = svc.store.share_cluster(_scope(who), cluster_id, body.project_id)
    return {"msg": "Shared", "cluster": cluster_json(cluster, who)}


@router.post("/2/clusters/{cluster_id}/unshare/{project_id}")
def unshare_cluster(
    svc: ServicesDep, who: CallerDep, cluster_id: ClusterId, project_id: Annotated[str, Path(max_length=100)]
) -> dict[str, Any]:
    """The project may queue nothing more there (its tasks already queued still run)."""
    cluster = svc.store.unshare_cluster(_scope(who), cluster_id, project_id)
    return {"msg": "Unshared", "cluster": cluster_json(cluster, who)}


@router.post("/2/clusters/{cluster_id}/credentials")
def rotate_cluster_token(svc: ServicesDep, who: CallerDep, cluster_id: ClusterId) -> dict[str, Any]:
    """A new token for the cluster's runners, shown this once; the old one is refused from now
    on (runners still using it stop at their next call)."""
    token, cluster = svc.store.rotate_cluster_token(_scope(who), cluster_id)
    return {"msg": "Rotated", "cluster": cluster_json(cluster, who, token)}


@router.delete("/2/clusters/{cluster_id}/credentials")
def revoke_cluster_token(svc: ServicesDep, who: CallerDep, cluster_id: ClusterId) -> dict[str, Any]:
    """No runner may connect until a new token is made (``POST .../credentials``)."""
    cluster = svc.store.revoke_cluster_token(_scope(who), cluster_id)
    return {"msg": "Revoked", "cluster": cluster_json(cluster, who)}


@router.get("/2/clusters/{cluster_id}/stats")
def cluster_stats(svc: ServicesDep, who: CallerDep, cluster_id: ClusterId) -> dict[str, Any]:
    """The cluster's runners heard of lately, their slots, and its tasks queued and running."""
    cluster = svc.store.get_cluster(_scope(who), cluster_id)
    horizon = time.time() - alive_horizon(svc.settings.heartbeat_interval_s)
    runners = [
        r
        for r in svc.store.list_runners()
        if cluster.id in r.clusters and r.stopped_at is None and r.last_heartbeat >= horizon
    ]
    counts = svc.store.cluster_counts(cluster.id)
    return {
        "cluster": {
            "id": cluster.id,
            "queued": counts.get("queued", 0),
            "running": counts.get("preparing", 0) + counts.get("running", 0),
            "runners_total": sum(r.slots for r in runners),
            "runners_available": sum(max(0, r.slots - r.running) for r in runners),
            "runners": [
                {
                    "id": r.id,
                    "host": r.host,
                    "slots": r.slots,
                    "running": r.running,
                    "version": r.version,
                    "last_heartbeat": timeutil.rfc3339(r.last_heartbeat),
                }
                for r in runners
            ],
        }
    }
