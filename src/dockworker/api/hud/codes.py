"""Code packages: the list, a package's settings, webhook, config (edited without uploading the
code again: a new revision that reuses the archive), revision history, downloads, delete."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Query, Request
from starlette.responses import Response

from ...errors import ClientError
from .. import codes as codes_api
from ..deps import ServicesDep
from ..schemas import FILTERED
from .session import Flash
from .web import FormViewerDep, HudRoute, ProjectDep, ViewerDep, page_of, redirect, render

router = APIRouter(prefix="/hud/projects/{project_id}/codes", route_class=HudRoute, include_in_schema=False)

PER_PAGE = 50


@router.get("")
def code_list(
    request: Request,
    svc: ServicesDep,
    who: ViewerDep,
    project: ProjectDep,
    page: Annotated[int, Query(ge=0, le=10_000)] = 0,
) -> Response:
    codes, more = page_of(lambda number, size: svc.store.list_codes(project.id, number, size), page, PER_PAGE)
    return render(
        request,
        "codes.html",
        who=who,
        project=project,
        tab="codes",
        codes=codes,
        page=page,
        more=more,
    )


@router.get("/{code_id}")
def code_page(
    request: Request,
    svc: ServicesDep,
    who: ViewerDep,
    project: ProjectDep,
    code_id: str,
    page: Annotated[int, Query(ge=0, le=10_000)] = 0,
) -> Response:
    code = svc.store.get_code(project.id, code_id)
    revisions, more = page_of(
        lambda number, size: svc.store.list_revisions(project.id, code_id, number, size), page, PER_PAGE
    )
    webhook = f"{str(request.base_url).rstrip('/')}/2/projects/{project.id}/codes/{code.id}/webhook"
    return render(
        request,
        "code.html",
        who=who,
        project=project,
        tab="codes",
        code=code,
        spec=code.latest_revision.spec,
        revisions=revisions,
        page=page,
        more=more,
        webhook=webhook,
        filtered=FILTERED,
        max_config_bytes=svc.settings.max_config_bytes,
    )


@router.post("/{code_id}/config")
def edit_config(
    request: Request,
    svc: ServicesDep,
    who: FormViewerDep,
    project: ProjectDep,
    code_id: str,
    config: Annotated[str, Form()] = "",
) -> Response:
    back = f"/hud/projects/{project.id}/codes/{code_id}"
    svc.store.get_code(project.id, code_id)
    text = config.replace("\r\n", "\n")
    try:
        if "\x00" in text:
            raise ClientError("the config contains a NUL character")
        if len(text.encode()) > svc.settings.max_config_bytes:
            raise ClientError(f"the config is larger than {svc.settings.max_config_bytes} bytes")
    except ClientError as exc:
        return redirect(request, back, Flash(kind="error", text=exc.message))
    rev = svc.store.update_code_config(project.id, code_id, text or None)
    return redirect(request, back, Flash(kind="ok", text=f"Config saved as revision {rev}."))


@router.post("/{code_id}/delete")
def delete(
    request: Request, svc: ServicesDep, who: FormViewerDep, project: ProjectDep, code_id: str
) -> Response:
    code = svc.store.get_code(project.id, code_id)
    codes_api.delete_code(svc, project.id, code_id)
    text = f"Deleted code package {code.name}; its queued tasks were cancelled."
    return redirect(request, f"/hud/projects/{project.id}/codes", Flash(kind="ok", text=text))


@router.get("/{code_id}/download")
def download(
    svc: ServicesDep,
    who: ViewerDep,
    project: ProjectDep,
    code_id: str,
    revision: Annotated[int | None, Query(ge=1)] = None,
) -> Response:
    return codes_api.download_code(svc, project.id, code_id, revision)
