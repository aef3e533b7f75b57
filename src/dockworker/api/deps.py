"""Request-scoped dependencies: the services an endpoint needs, and who is calling.

They are ``async``: FastAPI runs a plain ``def`` dependency in its thread pool, a round trip that
costs more than most of these do. Only the store calls go to a thread."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated

import anyio.to_thread
from fastapi import Depends, Path, Query, Request

from ..errors import ClientError, Forbidden, NotFound, Unauthorized
from ..models import TokenInfo
from ..settings import Settings
from ..store import Store
from .waiting import TaskWaiters


@dataclass(frozen=True, kw_only=True)
class Services:
    settings: Settings
    store: Store
    on_enqueue: Callable[[], None]
    image_present: Callable[[str], bool | None]
    # Set when the process begins to stop: followed log streams end (with a last line).
    stopping: threading.Event = field(default_factory=threading.Event)
    engine_ping: Callable[[], object] | None = None
    # Requests waiting for a task to end (?wait=S, followed logs).
    waiters: TaskWaiters = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "waiters", TaskWaiters(self.store, self.stopping))


async def services(request: Request) -> Services:
    found: Services = request.app.state.services
    return found


ServicesDep = Annotated[Services, Depends(services)]


def _token_from(request: Request, oauth: str | None) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() in ("oauth", "bearer") and value.strip():
        return value.strip()
    if oauth:
        return oauth
    raise Unauthorized("Missing token: send 'Authorization: OAuth <token>' or '?oauth=<token>'")


async def caller(
    request: Request,
    svc: ServicesDep,
    oauth: Annotated[str | None, Query(description="The token, when no Authorization header is sent")] = None,
) -> TokenInfo:
    info = await anyio.to_thread.run_sync(svc.store.authenticate, _token_from(request, oauth))
    if info is None:
        raise Unauthorized("Invalid, expired or revoked token")
    return info


CallerDep = Annotated[TokenInfo, Depends(caller)]


async def admin(who: CallerDep) -> TokenInfo:
    """The caller, if its token is an admin token (403 otherwise). Endpoints that name a project
    check the project first, so a project token learns nothing about other projects (404)."""
    if not who.is_admin:
        raise Forbidden("This endpoint needs an admin token")
    return who


AdminDep = Annotated[TokenInfo, Depends(admin)]


def check_project(svc: Services, who: TokenInfo, project_id: str) -> str:
    """The project, if the caller's token may reach it (NotFound otherwise)."""
    if who.project_id is not None and who.project_id != project_id:
        raise NotFound("Project not found")
    if who.project_id is None:  # an admin token: the project must exist (a project token implies it)
        svc.store.get_project(project_id)
    return project_id


async def project_id(
    svc: ServicesDep,
    who: CallerDep,
    project_id: Annotated[str, Path(max_length=100)],
) -> str:
    """The project of the path, if the caller's token may reach it (404 otherwise)."""
    if who.project_id is not None:
        return check_project(svc, who, project_id)
    return await anyio.to_thread.run_sync(check_project, svc, who, project_id)


ProjectDep = Annotated[str, Depends(project_id)]


async def paging(
    page: Annotated[int, Query(ge=0, le=100_000)] = 0,
    per_page: Annotated[int, Query(ge=1)] = 30,
) -> tuple[int, int]:
    if per_page > 100:
        raise ClientError("per_page may be at most 100")
    return page, per_page


PagingDep = Annotated[tuple[int, int], Depends(paging)]
