"""Webhooks: the raw request body becomes a task's payload (GitHub hooks, queues, scripts)."""

from __future__ import annotations

from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Query, Request

from ..errors import ClientError
from ..models import NewTask
from .deps import ProjectDep, ServicesDep
from .schemas import task_json

router = APIRouter(tags=["webhooks"])

Priority = Annotated[int | None, Query(ge=0, le=2)]
Timeout = Annotated[int | None, Query(ge=1)]
Delay = Annotated[int | None, Query(ge=0)]
Cluster = Annotated[str | None, Query(min_length=1, max_length=100)]
Label = Annotated[str | None, Query(max_length=255)]


async def _queue_from_body(
    request: Request,
    svc: Any,
    project_id: str,
    code_name: str,
    priority: int | None,
    timeout: int | None,
    delay: int | None,
    cluster: str | None,
    label: str | None,
) -> dict[str, Any]:
    settings = svc.settings
    body = await request.body()
    if len(body) > settings.max_payload_bytes:
        raise ClientError(f"the payload is larger than {settings.max_payload_bytes} bytes")
    try:
        payload = body.decode()
    except UnicodeDecodeError as exc:
        raise ClientError("the webhook body must be UTF-8 text") from exc
    if "\x00" in payload:
        raise ClientError("the webhook body contains a NUL character")
    if delay is not None and delay > settings.limits.max_delay_s:
        raise ClientError(f"delay may be at most {settings.limits.max_delay_s} s")
    new = NewTask(
        code_name=code_name,
        payload=payload,
        priority=priority,
        timeout=timeout or settings.limits.timeout_s,
        delay=delay or 0,
        label=label,
        cluster=cluster or "default",
    )
    (task,) = await anyio.to_thread.run_sync(
        svc.store.enqueue, project_id, [new], settings.limits.max_timeout_s
    )
    svc.on_enqueue()
    return {"id": task.id, "msg": "Queued up.", "task": task_json(task)}


@router.post("/2/projects/{project_id}/tasks/webhook")
async def task_webhook(
    request: Request,
    svc: ServicesDep,
    project_id: ProjectDep,
    code_name: Annotated[str, Query(min_length=1, max_length=255)],
    priority: Priority = None,
    timeout: Timeout = None,
    delay: Delay = None,
    cluster: Cluster = None,
    label: Label = None,
) -> dict[str, Any]:
    """Queue a task of ``code_name`` whose payload is this request's raw body."""
    return await _queue_from_body(
        request, svc, project_id, code_name, priority, timeout, delay, cluster, label
    )


@router.post("/2/projects/{project_id}/codes/{code_id}/webhook")
async def code_webhook(
    request: Request,
    svc: ServicesDep,
    project_id: ProjectDep,
    code_id: str,
    priority: Priority = None,
    timeout: Timeout = None,
    delay: Delay = None,
    cluster: Cluster = None,
    label: Label = None,
) -> dict[str, Any]:
    """The code package's own webhook URL: the raw body becomes the payload."""
    code = await anyio.to_thread.run_sync(svc.store.get_code, project_id, code_id)
    return await _queue_from_body(
        request, svc, project_id, code.name, priority, timeout, delay, cluster, label
    )
