"""Tasks: queue (batch), list, inspect, log (also followed live), cancel, progress, retry."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Body, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from .. import timeutil
from ..errors import ClientError, NotFound
from ..models import NewTask, Task, TaskFilter
from ..states import TaskStatus
from .deps import PagingDep, ProjectDep, Services, ServicesDep
from .runners import alive_horizon
from .schedules import MAX_EPOCH_S
from .schemas import ProgressIn, RetryIn, TaskBody, TaskListBody, TasksIn, task_json
from .waiting import RECHECK_S

router = APIRouter(tags=["tasks"])

CANCEL_CONFIRM_S = 3.0
FOLLOW_POLL_S = 0.2
MAX_WAIT_S = 60.0


@router.post("/2/projects/{project_id}/tasks", response_class=JSONResponse)
def queue_tasks(svc: ServicesDep, project_id: ProjectDep, body: TasksIn) -> JSONResponse:
    tasks = enqueue_checked(svc, project_id, body)
    # Already JSON values: FastAPI's generic encoding of a batch's answer would cost more than
    # queueing the batch.
    return JSONResponse({"msg": "Queued up", "tasks": [task_json(t) for t in tasks]})


def enqueue_checked(svc: Services, project_id: str, body: TasksIn) -> list[Task]:
    """Queue a batch with the API's checks (batch size, payload size, delay, timeouts); the HUD's
    form goes through here too."""
    settings = svc.settings
    if len(body.tasks) > settings.max_batch_tasks:
        raise ClientError(f"at most {settings.max_batch_tasks} tasks per request")
    new_tasks = []
    for index, item in enumerate(body.tasks):
        payload = item.payload or ""
        if len(payload.encode()) > settings.max_payload_bytes:
            raise ClientError(f"tasks[{index}].payload is larger than {settings.max_payload_bytes} bytes")
        delay = item.delay or 0
        if delay > settings.limits.max_delay_s:
            raise ClientError(f"tasks[{index}].delay may be at most {settings.limits.max_delay_s} s")
        new_tasks.append(
            NewTask(
                code_name=item.code_name,
                payload=payload,
                priority=item.priority,
                timeout=item.timeout or None,
                delay=delay,
                label=item.label,
                cluster=item.cluster or "default",
                retries=item.retries,
                retries_delay=item.retries_delay,
            )
        )
    default_timeout = settings.limits.timeout_s
    tasks = svc.store.enqueue(
        project_id,
        [t if t.timeout is not None else _with_timeout(t, default_timeout) for t in new_tasks],
        settings.limits.max_timeout_s,
    )
    svc.on_enqueue()
    return tasks


def _with_timeout(task: NewTask, timeout: int) -> NewTask:
    return dataclasses.replace(task, timeout=timeout)


def _truthy(value: str | None) -> bool:
    return value is not None and value.lower() in ("1", "true", "yes")


@router.get(
    "/2/projects/{project_id}/tasks",
    response_model=None,
    responses={200: {"model": TaskListBody, "description": "A page of tasks"}},
)
def list_tasks(
    request: Request,
    svc: ServicesDep,
    project_id: ProjectDep,
    paging: PagingDep,
    code_name: Annotated[str | None, Query(max_length=255)] = None,
    from_time: Annotated[
        int | None, Query(ge=0, le=MAX_EPOCH_S, description="epoch seconds, on creation time")
    ] = None,
    to_time: Annotated[
        int | None, Query(ge=0, le=MAX_EPOCH_S, description="epoch seconds, on creation time")
    ] = None,
    queued: str | None = None,
    preparing: str | None = None,
    running: str | None = None,
    complete: str | None = None,
    error: str | None = None,
    cancelled: str | None = None,
    killed: str | None = None,
    timeout: str | None = None,
    schedule_id: Annotated[str | None, Query(max_length=24)] = None,
    original_task_id: Annotated[str | None, Query(max_length=24, description="a retry chain")] = None,
    cursor: Annotated[
        str | None,
        Query(max_length=24, description="keyset paging: the previous page's next_cursor (page is ignored)"),
    ] = None,
) -> dict[str, Any]:
    """Newest first. Status flags (``queued=1&error=1``) are OR-ed; none means every status.

    Pages: ``page``/``per_page`` as IronWorker (a deep page costs a walk of an index), or
    ``cursor``: a full page's answer carries ``next_cursor``, which gives the next page at the same
    cost however deep (and a task queued meanwhile never shifts it); the last page has none."""
    flags = {
        TaskStatus.QUEUED: queued,
        TaskStatus.PREPARING: preparing,
        TaskStatus.RUNNING: running,
        TaskStatus.COMPLETE: complete,
        TaskStatus.ERROR: error,
        TaskStatus.CANCELLED: cancelled,
        TaskStatus.KILLED: killed,
        TaskStatus.TIMEOUT: timeout,
    }
    page, per_page = paging
    task_filter = TaskFilter(
        code_name=code_name,
        statuses=frozenset(status for status, flag in flags.items() if _truthy(flag)),
        from_time=from_time,
        to_time=to_time,
        page=page,
        per_page=per_page,
        schedule_id=schedule_id,
        original_task_id=original_task_id,
        after_id=cursor,
    )
    found = svc.store.list_tasks(project_id, task_filter)
    answer: dict[str, Any] = {"tasks": [task_json(t) for t in found]}
    if len(found) == per_page:  # there may be more: where the next page starts
        answer["next_cursor"] = found[-1].id
    return answer


@router.get(
    "/2/projects/{project_id}/tasks/{task_id}",
    response_model=None,
    responses={200: {"model": TaskBody, "description": "The task, with its payload"}},
)
async def get_task(
    svc: ServicesDep,
    project_id: ProjectDep,
    task_id: str,
    wait: Annotated[
        float | None,
        Query(
            ge=0,
            le=MAX_WAIT_S,
            description=f"Seconds (at most {MAX_WAIT_S:.0f}) to wait for the task to end: the answer "
            "comes as soon as the task is complete, error, timeout, cancelled or killed, or when "
            "the time is up (or the server begins to stop) with the task as it is then. Without "
            "it, at once. Use it instead of polling.",
        ),
    ] = None,
) -> JSONResponse:
    """A task, with its payload."""
    if not wait:
        return JSONResponse(await anyio.to_thread.run_sync(task_answer, svc, project_id, task_id))
    deadline = time.monotonic() + wait
    with svc.waiters.watching(task_id) as waiter:
        found = await anyio.to_thread.run_sync(svc.store.get_task, project_id, task_id)
        while True:
            left = deadline - time.monotonic()
            if found.status.is_terminal or left <= 0 or svc.stopping.is_set():
                break
            await waiter.wait(min(left, RECHECK_S))
            # Woken by an end this process wrote: the task as it left it, without a read.
            ended = svc.store.ended_task(task_id)
            if ended is not None and ended.project_id == project_id:
                found = ended
            else:
                found = await anyio.to_thread.run_sync(svc.store.get_task, project_id, task_id)
    if found.status is TaskStatus.QUEUED:  # its answer says whether a runner serves its cluster
        return JSONResponse(await anyio.to_thread.run_sync(task_answer, svc, project_id, task_id))
    return JSONResponse(task_json(found, with_payload=True))


def task_answer(svc: Services, project_id: str, task_id: str) -> dict[str, Any]:
    task = task_json(svc.store.get_task(project_id, task_id), with_payload=True)
    if task["status"] == "queued" and not task["msg"]:
        served = svc.store.live_clusters(alive_horizon(svc.settings.heartbeat_interval_s))
        if task["cluster"] not in served:
            task["msg"] = f"waiting: no runner serves cluster {task['cluster']!r}"
    return task


@router.get("/2/projects/{project_id}/tasks/{task_id}/events")
def task_events(svc: ServicesDep, project_id: ProjectDep, task_id: str) -> dict[str, Any]:
    svc.store.get_task(project_id, task_id)
    return {
        "events": [
            {"at": timeutil.rfc3339(e.at), "kind": e.kind, "detail": e.detail, "container_id": e.container_id}
            for e in svc.store.list_events(task_id)
        ]
    }


@router.get(
    "/2/projects/{project_id}/tasks/{task_id}/log",
    response_class=PlainTextResponse,
    responses={200: {"content": {"text/plain": {}}}},
)
def task_log(
    svc: ServicesDep,
    project_id: ProjectDep,
    task_id: str,
    follow: Annotated[bool, Query(description="stream the log until the task ends")] = False,
) -> Response:
    """The task's stdout and stderr, interleaved in the order the engine received them (each
    stream stays in order; lines of the two streams written close together may swap)."""
    task = svc.store.get_task(project_id, task_id)
    if follow:
        return StreamingResponse(_follow(svc, project_id, task_id), media_type="text/plain; charset=utf-8")
    if task.status is TaskStatus.QUEUED and task.log_size == 0:
        raise NotFound("Log not available yet: the task has not started")
    return Response(svc.store.read_log(task_id), media_type="text/plain; charset=utf-8")


async def _follow(svc: Services, project_id: str, task_id: str) -> AsyncIterator[bytes]:
    """The log as it grows, until the task ends, or until the server begins to stop: then a
    last line says so, and the stream ends cleanly instead of being cut. The log is read again
    every ``FOLLOW_POLL_S``, and at once when the task ends."""
    offset = 0
    ends_line = True
    with svc.waiters.watching(task_id) as waiter:
        while True:
            task = await anyio.to_thread.run_sync(svc.store.get_task, project_id, task_id)
            data = await anyio.to_thread.run_sync(svc.store.read_log, task_id, offset)
            if data:
                offset += len(data)
                ends_line = data.endswith(b"\n")
                yield data
            if task.status.is_terminal:
                rest = await anyio.to_thread.run_sync(svc.store.read_log, task_id, offset)
                if rest:
                    yield rest
                return
            if svc.stopping.is_set():
                yield (b"" if ends_line else b"\n") + stopping_line(task_id, task.status.value)
                return
            await waiter.wait(FOLLOW_POLL_S)


def stopping_line(task_id: str, status: str) -> bytes:
    return (
        f"[dockworker] the server is stopping: this log stream ends here, with task {task_id} "
        f"still {status}\n"
    ).encode()


@router.post("/2/projects/{project_id}/tasks/{task_id}/cancel")
def cancel_task(svc: ServicesDep, project_id: ProjectDep, task_id: str) -> dict[str, Any]:
    """A queued task is cancelled at once; a running one has its container killed (within a
    second); the answer waits up to a few seconds for that to be confirmed."""
    task = svc.store.request_cancel(project_id, task_id)
    deadline = time.monotonic() + CANCEL_CONFIRM_S
    while not task.status.is_terminal and time.monotonic() < deadline:
        time.sleep(0.05)
        task = svc.store.get_task(project_id, task_id)
    msg = "Cancelled" if task.status is TaskStatus.CANCELLED else "Cancellation requested"
    return {"msg": msg, "status": task.status.value}


@router.post("/2/projects/{project_id}/tasks/{task_id}/progress")
def set_progress(svc: ServicesDep, project_id: ProjectDep, task_id: str, body: ProgressIn) -> dict[str, str]:
    svc.store.set_progress(project_id, task_id, body.percent, body.msg)
    return {"msg": "Progress set"}


@router.post("/2/projects/{project_id}/tasks/{task_id}/retry")
def retry_task(
    svc: ServicesDep,
    project_id: ProjectDep,
    task_id: str,
    body: Annotated[RetryIn | None, Body()] = None,
) -> dict[str, Any]:
    delay = body.delay if body is not None else 0
    if delay > svc.settings.limits.max_delay_s:
        raise ClientError(f"delay may be at most {svc.settings.limits.max_delay_s} s")
    task = svc.store.retry(project_id, task_id, delay)
    svc.on_enqueue()
    return {"msg": "Queued up", "tasks": [task_json(task)]}
