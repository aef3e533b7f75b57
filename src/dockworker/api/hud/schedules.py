"""Schedules: current, ended and cancelled ones; a form for IronWorker's run_every / run_times /
start_at / end_at or a cron expression in a time zone, with the next runs previewed (the API's
own validation and cadence); cancel."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any
from zoneinfo import ZoneInfo, available_timezones

from fastapi import APIRouter, Query, Request
from pydantic import ValidationError
from starlette.responses import JSONResponse, Response

from ... import timeutil
from ...errors import ClientError, NotFound
from ...scheduler.timing import cadence_of
from .. import schedules as schedules_api
from ..deps import ServicesDep
from ..errors import describe_validation_error
from ..schemas import ScheduleIn, SchedulesIn
from .session import Flash
from .tasks import _number
from .web import FormValuesDep, FormViewerDep, HudRoute, ProjectDep, ViewerDep, page_of, redirect, render

router = APIRouter(
    prefix="/hud/projects/{project_id}/schedules", route_class=HudRoute, include_in_schema=False
)

PER_PAGE = 50
SHOWN = {"current": ("scheduled",), "ended": ("complete",), "cancelled": ("cancelled",)}
FORM_FIELDS = (
    "code_name",
    "payload",
    "kind",
    "run_every",
    "run_times",
    "start_at",
    "end_at",
    "cron",
    "timezone",
    "priority",
    "timeout",
    "delay",
    "cluster",
    "label",
)
PREVIEW_RUNS = 5


@router.get("")
def schedule_list(
    request: Request,
    svc: ServicesDep,
    who: ViewerDep,
    project: ProjectDep,
    show: Annotated[str, Query(pattern="^(current|ended|cancelled)$")] = "current",
    page: Annotated[int, Query(ge=0, le=10_000)] = 0,
) -> Response:
    found, more = page_of(
        lambda number, size: svc.store.list_schedules_by_status(project.id, SHOWN[show], number, size),
        page,
        PER_PAGE,
    )
    return render(
        request,
        "schedules.html",
        who=who,
        project=project,
        tab="schedules",
        schedules=[schedules_api.present(s) for s in found],
        show=show,
        page=page,
        more=more,
    )


def _moment(value: str) -> str | None:
    """A ``datetime-local`` value (no offset: UTC), or RFC 3339."""
    value = value.strip()
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return value  # the API's parser words the error
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.isoformat()


def schedule_from_form(form: dict[str, str]) -> ScheduleIn:
    cron = form.get("kind") == "cron"
    try:
        return ScheduleIn.model_validate(
            {
                "code_name": form.get("code_name", "").strip(),
                "payload": form.get("payload", ""),
                "start_at": _moment(form.get("start_at", "")),
                "end_at": _moment(form.get("end_at", "")),
                "run_times": _number(form, "run_times"),
                "run_every": None if cron else _number(form, "run_every"),
                "cron": (form.get("cron", "").strip() or None) if cron else None,
                "timezone": (form.get("timezone", "").strip() or None) if cron else None,
                "priority": _number(form, "priority"),
                "timeout": _number(form, "timeout"),
                "delay": _number(form, "delay"),
                "cluster": form.get("cluster", "").strip() or None,
                "label": form.get("label", "").strip() or None,
            }
        )
    except ValidationError as exc:
        raise ClientError(describe_validation_error(exc, prefix="schedule")) from exc


def preview(svc: Any, form: dict[str, str]) -> dict[str, Any]:
    spec = schedules_api.to_spec(schedule_from_form(form), "schedule", svc.settings)
    start = spec.start_at if spec.start_at is not None else timeutil.now()
    cadence = cadence_of(spec, start)
    first = cadence.next_slot(start - 0.001, 0)
    runs = [] if first is None else [first, *cadence.upcoming(first, 1, PREVIEW_RUNS - 1)]
    zone = ZoneInfo(spec.timezone)
    return {
        "description": cadence.describe(),
        "next_runs": [
            {
                "utc": timeutil.rfc3339(moment),
                "local": datetime.fromtimestamp(moment, zone).strftime(f"%Y-%m-%d %H:%M:%S {spec.timezone}"),
            }
            for moment in runs
        ],
    }


def _form_page(
    request: Request,
    svc: Any,
    who: Any,
    project: Any,
    values: dict[str, str],
    status: int = 200,
    **extra: Any,
) -> Response:
    defaults = dict.fromkeys(FORM_FIELDS, "")
    defaults.update(kind="every", run_every="3600", timezone="UTC", priority="0", cluster="default")
    codes = svc.store.list_codes(project.id, 0, 200)
    return render(
        request,
        "schedule_new.html",
        who=who,
        project=project,
        tab="schedules",
        values={**defaults, **values},
        code_names=[c.name for c in codes],
        zones=sorted(available_timezones()),
        status=status,
        **{"error": None, "preview": None, **extra},
    )


@router.get("/new")
def new_schedule(
    request: Request,
    svc: ServicesDep,
    who: ViewerDep,
    project: ProjectDep,
    code_name: Annotated[str, Query(max_length=255)] = "",
) -> Response:
    return _form_page(request, svc, who, project, {"code_name": code_name})


@router.get("/preview")
def preview_runs(request: Request, svc: ServicesDep, who: ViewerDep, project: ProjectDep) -> Response:
    """The description and next runs of the form's schedule, for the form's script; an invalid
    form answers ``{"error": ...}`` (a form being typed is not a failed request)."""
    form = {name: request.query_params.get(name, "")[:10_000] for name in FORM_FIELDS if name != "payload"}
    try:
        return JSONResponse(preview(svc, form))
    except ClientError as exc:
        return JSONResponse({"error": exc.message})


@router.post("")
def create(
    request: Request, svc: ServicesDep, who: FormViewerDep, project: ProjectDep, posted: FormValuesDep
) -> Response:
    form = {name: posted.get(name, "") for name in FORM_FIELDS}
    try:
        shown = preview(svc, form)
        if posted.get("action") == "preview":
            return _form_page(request, svc, who, project, form, preview=shown)
        created = schedules_api.create_schedules(
            svc, project.id, SchedulesIn(schedules=[schedule_from_form(form)])
        )
    except ClientError as exc:
        return _form_page(request, svc, who, project, form, exc.status_code, error=exc.message)
    schedule = created["schedules"][0]
    text = f"Scheduled {schedule['id']}: {schedule['description']}."
    return redirect(request, f"/hud/projects/{project.id}/schedules", Flash(kind="ok", text=text))


@router.post("/{schedule_id}/cancel")
def cancel(
    request: Request, svc: ServicesDep, who: FormViewerDep, project: ProjectDep, schedule_id: str
) -> Response:
    try:
        schedules_api.cancel_schedule(svc, project.id, schedule_id)
    except NotFound:
        raise
    except ClientError as exc:
        return redirect(
            request, f"/hud/projects/{project.id}/schedules", Flash(kind="error", text=exc.message)
        )
    text = f"Cancelled schedule {schedule_id}."
    return redirect(request, f"/hud/projects/{project.id}/schedules", Flash(kind="ok", text=text))
