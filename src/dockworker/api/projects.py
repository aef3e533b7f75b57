"""Projects and stacks."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from .. import __version__, timeutil
from ..stacks.catalog import STACKS
from .deps import CallerDep, ProjectDep, ServicesDep

router = APIRouter()


@router.get("/2/projects/{project_id}", tags=["projects"])
def get_project(svc: ServicesDep, project_id: ProjectDep) -> dict[str, Any]:
    project = svc.store.get_project(project_id)
    return {"id": project.id, "name": project.name, "created_at": timeutil.rfc3339(project.created_at)}


@router.get("/2/stacks", tags=["stacks"])
def list_stacks(who: CallerDep) -> list[str]:
    """The names of the stacks code packages may use (``stack`` or legacy ``runtime``)."""
    return sorted(STACKS)


@router.get("/version", tags=["meta"])
def version() -> dict[str, str]:
    return {"version": __version__, "api": "2"}
