"""Projects and tokens, managed with an admin token.

A project token gets 403 from the collection endpoints (``/2/projects``, ``/2/tokens/ID``) and
from its own project's ``/tokens``, and 404 when the path names another project, as every
project endpoint answers: a project token learns nothing about other projects."""

from __future__ import annotations

import math
from typing import Annotated, Any

from fastapi import APIRouter, Path
from pydantic import Field, field_validator

from .. import timeutil
from ..errors import ClientError
from ..models import Project, TokenInfo
from ..settings import MAX_TOKEN_LIFETIME_S
from .deps import AdminDep, ProjectDep, ServicesDep
from .schedules import parse_moment
from .schemas import Moment, Strict, check_name

router = APIRouter(tags=["admin"])

Name = Annotated[str, Field(min_length=1, max_length=200)]


class ProjectIn(Strict):
    name: Name
    create_token: bool = False  # also make the project's first token (shown once)

    _name = field_validator("name")(check_name)


class TokenIn(Strict):
    name: Name = "api"
    expires_in: Annotated[int | None, Field(ge=1, le=MAX_TOKEN_LIFETIME_S, description="seconds")] = None
    expires_at: Moment | None = None

    _name = field_validator("name")(check_name)


def project_json(project: Project) -> dict[str, Any]:
    return {"id": project.id, "name": project.name, "created_at": timeutil.rfc3339(project.created_at)}


def token_json(info: TokenInfo, secret: str | None = None) -> dict[str, Any]:
    """A token's record; the secret only in the answer that created it."""
    data: dict[str, Any] = {
        "id": info.id,
        "project_id": info.project_id,
        "admin": info.is_admin,
        "name": info.name,
        "created_at": timeutil.rfc3339(info.created_at),
        "expires_at": timeutil.rfc3339(info.expires_at),
        "revoked_at": timeutil.rfc3339(info.revoked_at),
        "last_used_at": timeutil.rfc3339(info.last_used_at),
        "active": info.usable_at(timeutil.now()),
    }
    if secret is not None:
        data["token"] = secret
    return data


def expiry_of(body: TokenIn) -> float | None:
    if body.expires_in is not None and body.expires_at is not None:
        raise ClientError("give expires_in or expires_at, not both")
    now = timeutil.now()
    if body.expires_in is not None:
        return now + body.expires_in
    expires_at = parse_moment(body.expires_at, "expires_at")
    if expires_at is None:
        return None
    if not (math.isfinite(expires_at) and now < expires_at <= now + MAX_TOKEN_LIFETIME_S):
        raise ClientError("expires_at must be in the future, and at most 10 years away")
    return expires_at


@router.post("/2/projects")
def create_project(svc: ServicesDep, _: AdminDep, body: ProjectIn) -> dict[str, Any]:
    project = svc.store.create_project(body.name)
    answer = {"msg": "Project created", **project_json(project)}
    if body.create_token:
        secret, info = svc.store.create_token(project.id, "first token")
        answer["token"] = token_json(info, secret)
    return answer


@router.get("/2/projects")
def list_projects(svc: ServicesDep, _: AdminDep) -> dict[str, Any]:
    return {"projects": [project_json(p) for p in svc.store.list_projects()]}


@router.post("/2/projects/{project_id}/tokens")
def create_token(svc: ServicesDep, project_id: ProjectDep, _: AdminDep, body: TokenIn) -> dict[str, Any]:
    """A new token for the project. The answer is the only place its secret ever appears."""
    secret, info = svc.store.create_token(project_id, body.name, expiry_of(body))
    return {"msg": "Token created: store it now, it is not shown again", **token_json(info, secret)}


@router.get("/2/projects/{project_id}/tokens")
def list_tokens(svc: ServicesDep, project_id: ProjectDep, _: AdminDep) -> dict[str, Any]:
    """The project's tokens, revoked and expired ones included; never their secrets."""
    return {"tokens": [token_json(t) for t in svc.store.list_tokens(project_id)]}


@router.delete("/2/tokens/{token_id}")
def revoke_token(
    svc: ServicesDep, _: AdminDep, token_id: Annotated[str, Path(max_length=100)]
) -> dict[str, Any]:
    """Revoke a token (project or admin) at once. Revoking a revoked token changes nothing."""
    return {"msg": "Revoked", **token_json(svc.store.revoke_token(token_id))}
