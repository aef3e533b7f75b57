"""Projects and stacks."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from .. import __version__, timeutil
from ..stacks.catalog import STACKS, Stack
from .deps import CallerDep, ProjectDep, ServicesDep

router = APIRouter()


@router.get("/2/projects/{project_id}", tags=["projects"])
def get_project(svc: ServicesDep, project_id: ProjectDep) -> dict[str, Any]:
    project = svc.store.get_project(project_id)
    return {"id": project.id, "name": project.name, "created_at": timeutil.rfc3339(project.created_at)}


@router.get("/2/stacks", tags=["stacks"])
def list_stacks(svc: ServicesDep, who: CallerDep, details: bool = False) -> list[Any]:
    """The names of the stacks code packages may use (``stack`` or legacy ``runtime``), as
    IronWorker answered. With ``details=1``, one object per stack instead: its version, image,
    legacy runtimes and command, user, and ``built`` (whether its image is on this host's engine;
    null when unknown)."""
    if not details:
        return sorted(STACKS)
    return [_stack_json(STACKS[name], svc.image_present(STACKS[name].image)) for name in sorted(STACKS)]


def _stack_json(stack: Stack, built: bool | None) -> dict[str, Any]:
    return {
        "name": stack.name,
        "version": stack.version,
        "image": stack.image,
        "description": stack.description,
        "runtimes": stack.runtimes,
        "legacy_command": stack.legacy_command,
        "user": stack.user,
        "built": built,
    }


@router.get("/version", tags=["meta"])
def version() -> dict[str, str]:
    return {"version": __version__, "api": "2"}
