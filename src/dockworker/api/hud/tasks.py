"""The project's packages with their counts, a package's tasks (filters, paging, pause/resume,
queue, cancel all), and a task's page with its live log and status (server-sent events).

Every action calls the API's own endpoint function, so the HUD applies the same checks and
limits as the API."""

from __future__ import annotations

import codecs
import json
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any, NamedTuple
from urllib.parse import urlencode

import anyio
from fastapi import APIRouter, Header, Query, Request
from pydantic import ValidationError
from starlette.responses import Response, StreamingResponse

from ... import timeutil
from ...errors import ClientError, Conflict, NotFound
from ...models import Task, TaskFilter
from ...states import TaskStatus
from .. import codes as codes_api
from .. import tasks as tasks_api
from ..deps import Services, ServicesDep
from ..errors import describe_validation_error
from ..schemas import TaskIn, TasksIn
from .masking import mask_payload
from .session import Flash
from .web import (
    FormValuesDep,
    FormViewerDep,
    HudRoute,
    ProjectDep,
    ViewerDep,
    page_of,
    redirect,
    render,
    show_bytes,
    show_duration,
)

router = APIRouter(prefix="/hud/projects/{project_id}", route_class=HudRoute, include_in_schema=False)

PER_PAGE = 30
DAY_S = 86400
LOG_TAIL_BYTES = 256 * 1024
STREAM_POLL_S = 0.25
KEEPALIVE_S = 15.0
MAX_CHAIN = 50
# The columns of the project page, IronWorker's order; "running" counts preparing tasks too.
COUNT_COLUMNS = ("queued", "running", "complete", "error", "cancelled", "timeout", "killed")


class UsageField(NamedTuple):
    field: str  # the task's (and the task JSON's)
    live: str  # the key of its text in the live stream's ``task`` event and the page's data-field
    label: str
    show: Callable[[int], str]


# What each task used: measured by its runner when the container ended (null until then).
USAGE_FIELDS = (
    UsageField("cpu_time_ms", "cpu_time", "CPU time", lambda ms: show_duration(ms / 1000)),
    UsageField("peak_memory_bytes", "peak_memory", "Peak memory", show_bytes),
)


def _columns(counts: dict[str, int]) -> dict[str, int]:
    shown = {name: counts.get(name, 0) for name in COUNT_COLUMNS}
    shown["running"] += counts.get(TaskStatus.PREPARING, 0)
    return shown


@router.get("")
def project_page(
    request: Request,
    svc: ServicesDep,
    who: ViewerDep,
    project: ProjectDep,
    page: Annotated[int, Query(ge=0, le=10_000)] = 0,
) -> Response:
    shown, more = page_of(lambda number, size: svc.store.list_codes(project.id, number, size), page, PER_PAGE)
    counts = svc.store.package_counts(project.id, [c.id for c in shown], timeutil.now() - DAY_S)
    rows = [(code, _columns(counts[code.id])) for code in shown]
    return render(
        request,
        "project.html",
        who=who,
        project=project,
        tab="tasks",
        rows=rows,
        columns=COUNT_COLUMNS,
        page=page,
        more=more,
    )


def _statuses(values: list[str] | None) -> frozenset[TaskStatus]:
    chosen = set()
    for value in values or []:
        try:
            chosen.add(TaskStatus(value))
        except ValueError as exc:
            raise ClientError(f"unknown status {value!r}") from exc
    return frozenset(chosen)


@router.get("/codes/{code_id}/tasks")
def code_tasks(
    request: Request,
    svc: ServicesDep,
    who: ViewerDep,
    project: ProjectDep,
    code_id: str,
    status: Annotated[list[str] | None, Query(max_length=len(TaskStatus))] = None,
    page: Annotated[int, Query(ge=0, le=100_000)] = 0,
) -> Response:
    code = svc.store.get_code(project.id, code_id)
    statuses = _statuses(status)

    def fetch(number: int, size: int) -> list[Task]:
        return svc.store.list_tasks(
            project.id, TaskFilter(code_name=code.name, statuses=statuses, page=number, per_page=size)
        )

    found, more = page_of(fetch, page, PER_PAGE)
    counts = svc.store.package_counts(project.id, [code.id], timeutil.now() - DAY_S)[code.id]
    chosen = sorted(s.value for s in statuses)

    return render(
        request,
        "code_tasks.html",
        who=who,
        project=project,
        tab="tasks",
        code=code,
        tasks=found,
        more=more,
        page=page,
        page_base=f"?{urlencode([('status', s) for s in chosen])}&" if chosen else "?",
        chosen=chosen,
        all_statuses=[s.value for s in TaskStatus],
        active=counts[TaskStatus.PREPARING] + counts[TaskStatus.RUNNING],
    )


def _back_to_tasks(project_id: str, code_id: str) -> str:
    return f"/hud/projects/{project_id}/codes/{code_id}/tasks"


@router.post("/codes/{code_id}/pause")
def pause(
    request: Request, svc: ServicesDep, who: FormViewerDep, project: ProjectDep, code_id: str
) -> Response:
    answer = codes_api.pause_queue(svc, project.id, code_id)
    return redirect(request, _back_to_tasks(project.id, code_id), Flash(kind="ok", text=answer["msg"]))


@router.post("/codes/{code_id}/resume")
def resume(
    request: Request, svc: ServicesDep, who: FormViewerDep, project: ProjectDep, code_id: str
) -> Response:
    answer = codes_api.resume_queue(svc, project.id, code_id)
    return redirect(request, _back_to_tasks(project.id, code_id), Flash(kind="ok", text=answer["msg"]))


@router.post("/codes/{code_id}/cancel_all")
def cancel_all(
    request: Request, svc: ServicesDep, who: FormViewerDep, project: ProjectDep, code_id: str
) -> Response:
    answer = codes_api.cancel_all(svc, project.id, code_id)
    text = f"Cancelled {answer['cancelled']} queued tasks; stopping {answer['stopping']} running."
    return redirect(request, _back_to_tasks(project.id, code_id), Flash(kind="ok", text=text))


# --- queueing from the form -------------------------------------------------------------------

QUEUE_FIELDS = ("payload", "priority", "delay", "timeout", "cluster", "label")


def _number(form: dict[str, str], name: str) -> int | None:
    raw = form.get(name, "").strip()
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError as exc:
        raise ClientError(f"{name}: {raw!r} is not a whole number") from exc


def task_from_form(code_name: str, form: dict[str, str]) -> TaskIn:
    try:
        return TaskIn.model_validate(
            {
                "code_name": code_name,
                "payload": form.get("payload", ""),
                "priority": _number(form, "priority"),
                "delay": _number(form, "delay"),
                "timeout": _number(form, "timeout"),
                "cluster": form.get("cluster", "").strip() or None,
                "label": form.get("label", "").strip() or None,
            }
        )
    except ValidationError as exc:
        raise ClientError(describe_validation_error(exc)) from exc


def _queue_form(
    request: Request,
    svc: Services,
    who: Any,
    project: Any,
    code_id: str,
    values: dict[str, str],
    **extra: Any,
) -> Response:
    code = svc.store.get_code(project.id, code_id)
    defaults = {
        "payload": "",
        "priority": str(code.latest_revision.spec.default_priority),
        "delay": "0",
        "timeout": str(svc.settings.limits.timeout_s),
        "cluster": "default",
        "label": "",
    }
    return render(
        request,
        "queue.html",
        who=who,
        project=project,
        tab="tasks",
        code=code,
        values={**defaults, **values},
        max_timeout=svc.settings.limits.max_timeout_s,
        **extra,
    )


@router.get("/codes/{code_id}/queue")
def queue_page(
    request: Request, svc: ServicesDep, who: ViewerDep, project: ProjectDep, code_id: str
) -> Response:
    return _queue_form(request, svc, who, project, code_id, {}, error=None)


@router.post("/codes/{code_id}/queue")
def queue_task(
    request: Request,
    svc: ServicesDep,
    who: FormViewerDep,
    project: ProjectDep,
    code_id: str,
    posted: FormValuesDep,
) -> Response:
    code = svc.store.get_code(project.id, code_id)
    values = {name: posted.get(name, "") for name in QUEUE_FIELDS}
    try:
        queued = tasks_api.enqueue_checked(
            svc, project.id, TasksIn(tasks=[task_from_form(code.name, values)])
        )
    except ClientError as exc:
        return _queue_form(
            request, svc, who, project, code_id, values, error=exc.message, status=exc.status_code
        )
    task_id = queued[0].id
    return redirect(request, _task_url(project.id, task_id), Flash(kind="ok", text=f"Queued task {task_id}."))


# --- one task ---------------------------------------------------------------------------------


def _task_url(project_id: str, task_id: str) -> str:
    return f"/hud/projects/{project_id}/tasks/{task_id}"


def resource_usage(task: Task) -> list[tuple[UsageField, str]]:
    """Each figure of what the task used, as the page shows it (or why it is missing)."""
    return [(usage, usage_text(task, usage)) for usage in USAGE_FIELDS]


def usage_text(task: Task, usage: UsageField) -> str:
    value = getattr(task, usage.field)
    if value is not None:
        return usage.show(value)
    if not task.status.is_terminal:
        return "measured when the task ends"
    return "not recorded" if task.start_time is not None else "no container ran"


def retry_chain(svc: Services, task: Task) -> list[Task]:
    """The task's retries, first to last: from the original task along ``retry_task_id``
    (primary-key reads; listing by ``original_task_id`` would read every task of the project)."""
    chain = [
        task if task.original_task_id is None else svc.store.get_task(task.project_id, task.original_task_id)
    ]
    while chain[-1].retry_task_id is not None and len(chain) < MAX_CHAIN:
        try:
            chain.append(svc.store.get_task(task.project_id, chain[-1].retry_task_id))
        except NotFound:
            break
    return chain


def _log_tail(svc: Services, task: Task) -> tuple[str, int, bool]:
    """The end of the log as text, the byte offset a live stream continues from, and whether
    the beginning was left out."""
    start = max(0, task.log_size - LOG_TAIL_BYTES)
    data = svc.store.read_log(task.id, start)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    text = decoder.decode(data, final=False)
    pending, _ = decoder.getstate()
    return text, start + len(data) - len(pending), start > 0


@router.get("/tasks/{task_id}")
def task_page(
    request: Request, svc: ServicesDep, who: ViewerDep, project: ProjectDep, task_id: str
) -> Response:
    task = svc.store.get_task(project.id, task_id)
    data = tasks_api.task_answer(svc, project.id, task_id)
    chain = retry_chain(svc, task)
    try:
        revision = svc.store.get_revision(task.revision_id)
    except NotFound:
        revision = None
    log_text, log_offset, log_cut = _log_tail(svc, task)
    fields = {key: value for key, value in data.items() if key != "payload"}
    fields.update(
        attempts=task.attempts,
        infra_attempts=task.infra_attempts,
        runner_id=task.runner_id,
        cancel_requested=task.cancel_requested,
        run_at=timeutil.rfc3339(task.run_at),
    )
    return render(
        request,
        "task.html",
        who=who,
        project=project,
        tab="tasks",
        task=task,
        fields=fields,
        payload=mask_payload(task.payload),
        usage=resource_usage(task),
        events=svc.store.list_events(task.id),
        chain=chain,
        revision=revision,
        log_text=log_text,
        log_offset=log_offset,
        log_cut=log_cut,
        live=not task.status.is_terminal,
    )


def live_fields(task: Task) -> dict[str, Any]:
    return {
        "status": task.status.value,
        "msg": task.msg or "",
        "percent": task.percent,
        "start_time": timeutil.rfc3339(task.start_time),
        "end_time": timeutil.rfc3339(task.end_time),
        "duration": task.duration_ms,
        "log_size": task.log_size,
        "attempts": task.attempts,
        "infra_attempts": task.infra_attempts,
        "active": not task.status.is_terminal,
        **{usage.field: getattr(task, usage.field) for usage in USAGE_FIELDS},
        **{usage.live: usage_text(task, usage) for usage in USAGE_FIELDS},
    }


def _event(kind: str, data: Any, event_id: int | None = None) -> bytes:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {kind}\ndata: {json.dumps(data)}\n\n".encode()


async def follow(svc: Services, project_id: str, task_id: str, offset: int) -> AsyncIterator[bytes]:
    """Server-sent events: ``log`` (new log text; its id is the byte offset reached, so a
    reconnecting browser resumes there), ``task`` (status, progress, times) when they change,
    and ``end`` when the task reached a terminal state, which closes the stream."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    previous: dict[str, Any] | None = None
    quiet_since = anyio.current_time()
    yield b"retry: 2000\n\n"
    while True:
        task = await anyio.to_thread.run_sync(svc.store.get_task, project_id, task_id)
        data = await anyio.to_thread.run_sync(svc.store.read_log, task_id, offset)
        offset += len(data)
        text = decoder.decode(data, final=task.status.is_terminal)
        if text:
            yield _event("log", text, offset)
        state = live_fields(task)
        if state != previous:
            yield _event("task", state)
            previous = state
            quiet_since = anyio.current_time()
        if task.status.is_terminal:
            yield _event("end", {"status": task.status.value})
            return
        if anyio.current_time() - quiet_since > KEEPALIVE_S:
            yield b": keepalive\n\n"
            quiet_since = anyio.current_time()
        await anyio.sleep(STREAM_POLL_S)


@router.get("/tasks/{task_id}/stream")
async def stream(
    svc: ServicesDep,
    who: ViewerDep,
    project: ProjectDep,
    task_id: str,
    offset: Annotated[int, Query(ge=0)] = 0,
    last_event_id: Annotated[str | None, Header(max_length=20)] = None,
) -> Response:
    await anyio.to_thread.run_sync(svc.store.get_task, project.id, task_id)
    if last_event_id is not None and last_event_id.isdigit():
        offset = max(offset, int(last_event_id))
    return StreamingResponse(
        follow(svc, project.id, task_id, offset),
        media_type="text/event-stream",
        headers={"X-Accel-Buffering": "no"},
    )


@router.get("/tasks/{task_id}/log")
def full_log(svc: ServicesDep, who: ViewerDep, project: ProjectDep, task_id: str) -> Response:
    return tasks_api.task_log(svc, project.id, task_id, follow=False)


@router.post("/tasks/{task_id}/cancel")
def cancel(
    request: Request, svc: ServicesDep, who: FormViewerDep, project: ProjectDep, task_id: str
) -> Response:
    try:
        answer = tasks_api.cancel_task(svc, project.id, task_id)
    except Conflict as exc:
        return redirect(request, _task_url(project.id, task_id), Flash(kind="error", text=exc.message))
    return redirect(request, _task_url(project.id, task_id), Flash(kind="ok", text=answer["msg"]))


@router.post("/tasks/{task_id}/retry")
def retry(
    request: Request, svc: ServicesDep, who: FormViewerDep, project: ProjectDep, task_id: str
) -> Response:
    try:
        answer = tasks_api.retry_task(svc, project.id, task_id, None)
    except Conflict as exc:
        return redirect(request, _task_url(project.id, task_id), Flash(kind="error", text=exc.message))
    new_id = answer["tasks"][0]["id"]
    return redirect(
        request, _task_url(project.id, new_id), Flash(kind="ok", text=f"Retrying as task {new_id}.")
    )
