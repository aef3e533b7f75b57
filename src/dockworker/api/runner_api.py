"""The runner routes: what a remote runner (``dockworker runner --api URL``) asks of the service,
over HTTP, with its cluster's token. They are ``runner/link.py``'s ``RunnerLink`` operations,
confined to what that token may reach:

* the claim takes only the cluster's tasks (a long poll: the answer waits until work arrives,
  woken by the store's wake-ups, or until ``wait_s`` has passed);
* every other route acts on tasks leased to the calling runner, or reads the code of one;
* the runner's identity is a session (one live process per runner id, ``X-Runner-Id`` and
  ``X-Runner-Session`` on every request after ``POST /2/runner/session``); its id is its name
  within the cluster, ``NAME@CLUSTER_ID``.

A cluster token reaches no project route, and a project token no runner route. Budgets,
delays and lease lengths are the server's settings, whatever a runner would like."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import JSONResponse, Response

from ..errors import ClientError, Conflict, NotFound, Unauthorized
from ..models import Cluster
from ..states import EventKind, TaskStatus
from ..wire import outcome_from_wire, revision_to_wire, task_to_wire
from .deps import Services, ServicesDep
from .schemas import Strict, check_name

router = APIRouter(tags=["runner"])

MAX_CLAIM_WAIT_S = 30.0
WAKE_CHECK_S = 1.0  # a wait re-checks this often (a NOTIFY lost, the service stopping)
MAX_LOG_CHUNK = 1024 * 1024
MAX_IDS = 10_000
# The events a runner writes itself; the others follow from its reports.
RUNNER_EVENTS = frozenset({EventKind.CONTAINER_CREATED, EventKind.READOPTED, EventKind.PROGRESS_REFUSED})
TaskId = Annotated[str, Path(max_length=100)]


class SessionLost(Conflict):
    """This runner's session ended or was taken over by another process: stop it (a restarted
    runner opens a new session)."""


@dataclass(frozen=True)
class RunnerCaller:
    cluster: Cluster
    runner_id: str
    session: str


def _cluster_token(request: Request) -> str:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() in ("oauth", "bearer") and value.strip():
        return value.strip()
    raise Unauthorized("Missing cluster token: send 'Authorization: OAuth <cluster token>'")


def cluster_caller(request: Request, svc: ServicesDep) -> Cluster:
    cluster = svc.store.authenticate_cluster(_cluster_token(request))
    if cluster is None:
        raise Unauthorized("Invalid or revoked cluster token")
    return cluster


ClusterDep = Annotated[Cluster, Depends(cluster_caller)]


def runner_caller(request: Request, svc: ServicesDep, cluster: ClusterDep) -> RunnerCaller:
    runner_id = request.headers.get("x-runner-id", "")
    session = request.headers.get("x-runner-session", "")
    if not runner_id or not session:
        raise Unauthorized("Missing X-Runner-Id and X-Runner-Session: open a session first")
    if not svc.store.check_runner_session(runner_id, cluster.id, session):
        raise SessionLost()
    return RunnerCaller(cluster=cluster, runner_id=runner_id, session=session)


RunnerDep = Annotated[RunnerCaller, Depends(runner_caller)]


# --- the session ------------------------------------------------------------------------------


class SessionIn(Strict):
    name: str
    host: str
    slots: int
    version: str
    resume: str | None = None


@router.post("/2/runner/session")
def open_session(svc: ServicesDep, cluster: ClusterDep, body: SessionIn) -> dict[str, Any]:
    """Take the runner's identity for this process (409 while another live process has it,
    unless ``resume`` is that process's session: the same runner restarted) and register it."""
    try:
        name = check_name(body.name)
    except ValueError as exc:
        raise ClientError(f"name {exc}") from None
    if len(name) > 150 or not 1 <= len(body.host) <= 255 or len(body.version) > 40:
        raise ClientError("name (at most 150), host (1 to 255) or version (at most 40) too long")
    if not 1 <= body.slots <= 1024:
        raise ClientError("slots must be between 1 and 1024")
    settings = svc.settings
    runner_id = f"{name}@{cluster.id}"
    session = svc.store.open_runner_session(
        runner_id, cluster.id, body.host, settings.lease_ttl_s, body.resume
    )
    svc.store.register_runner(runner_id, body.host, [cluster.id], body.slots, body.version)
    return {
        "runner_id": runner_id,
        "session": session,
        "cluster_id": cluster.id,
        "cluster_name": cluster.name,
        "memory_mb": cluster.memory_mb,
        "encrypted_payloads": cluster.public_key is not None,
        "installation_id": svc.store.installation_id(),
        "lease_ttl_s": settings.lease_ttl_s,
        "heartbeat_interval_s": settings.heartbeat_interval_s,
        "max_claim_wait_s": MAX_CLAIM_WAIT_S,
    }


@router.delete("/2/runner/session")
def close_session(svc: ServicesDep, caller: RunnerDep) -> dict[str, str]:
    svc.store.unregister_runner(caller.runner_id)
    svc.store.close_runner_session(caller.runner_id, caller.session)
    return {"msg": "Closed"}


class HeartbeatIn(Strict):
    running: list[str]


@router.post("/2/runner/heartbeat")
def heartbeat(svc: ServicesDep, caller: RunnerDep, body: HeartbeatIn) -> dict[str, Any]:
    """Renew the session and the leases of the running tasks: the ids still leased (a task
    left out was taken away: its container is to be stopped)."""
    if len(body.running) > MAX_IDS:
        raise ClientError(f"at most {MAX_IDS} task ids")
    ttl = svc.settings.lease_ttl_s
    if not svc.store.renew_runner_session(caller.runner_id, caller.session, ttl):
        raise SessionLost()
    svc.store.runner_heartbeat(caller.runner_id, len(body.running))
    leased = svc.store.heartbeat(caller.runner_id, body.running, ttl)
    return {"leased": sorted(leased)}


# --- work ------------------------------------------------------------------------------------


class ClaimIn(Strict):
    wait_s: float = 0.0


_waiters: anyio.CapacityLimiter | None = None


def _waiter_threads() -> anyio.CapacityLimiter:
    """Threads of their own for long polls, so that waiting runners never hold the threads
    the other routes need."""
    global _waiters
    if _waiters is None:
        _waiters = anyio.CapacityLimiter(512)
    return _waiters


@router.post("/2/runner/claim")
async def claim(svc: ServicesDep, caller: RunnerDep, body: ClaimIn, request: Request) -> JSONResponse:
    """The next task of the cluster, leased to this runner; or ``{"task": null}`` when none came
    within ``wait_s`` (at most 30 s)."""
    if not 0 <= body.wait_s <= MAX_CLAIM_WAIT_S:
        raise ClientError(f"wait_s must be between 0 and {MAX_CLAIM_WAIT_S:.0f}")
    settings = svc.settings
    deadline = time.monotonic() + body.wait_s
    token = _cluster_token(request)
    while True:
        task = await anyio.to_thread.run_sync(
            lambda: svc.store.claim(
                caller.runner_id, [caller.cluster.id], settings.lease_ttl_s, settings.starvation_bound_s
            )
        )
        if task is not None:
            if await request.is_disconnected():  # nobody to hand it to: back to its place
                await anyio.to_thread.run_sync(
                    svc.store.release, task.id, caller.runner_id, "the runner went away during its claim"
                )
                return JSONResponse({"task": None})
            return JSONResponse({"task": task_to_wire(task)})
        left = deadline - time.monotonic()
        if left <= 0 or svc.stopping.is_set() or await request.is_disconnected():
            return JSONResponse({"task": None})
        await anyio.to_thread.run_sync(
            svc.store.wait_for_work, min(left, WAKE_CHECK_S), limiter=_waiter_threads()
        )
        # A token revoked or rotated during the wait leases nothing more: refused at once.
        if await anyio.to_thread.run_sync(svc.store.authenticate_cluster, token) is None:
            raise Unauthorized("Invalid or revoked cluster token")


@router.get("/2/runner/tasks/{task_id}")
def get_leased_task(svc: ServicesDep, caller: RunnerDep, task_id: TaskId) -> dict[str, Any]:
    return {"task": task_to_wire(svc.store.leased_task(task_id, caller.runner_id))}


@router.get("/2/runner/leased")
def leased_tasks(svc: ServicesDep, caller: RunnerDep) -> dict[str, Any]:
    return {"task_ids": sorted(svc.store.leased_task_ids(caller.runner_id))}


@router.get("/2/runner/cancels")
def cancels(svc: ServicesDep, caller: RunnerDep) -> dict[str, Any]:
    """This runner's leased tasks that someone asked to cancel."""
    return {"task_ids": sorted(svc.store.cancel_requested(caller.runner_id))}


class TaskIdsIn(Strict):
    task_ids: list[str]


@router.post("/2/runner/active")
def still_active(svc: ServicesDep, caller: RunnerDep, body: TaskIdsIn) -> dict[str, Any]:
    """Of the given ids (the runner's host's containers), those it must leave alone: the
    cluster's active tasks, and ids that are not the cluster's tasks at all (not its to judge)."""
    if len(body.task_ids) > MAX_IDS:
        raise ClientError(f"at most {MAX_IDS} task ids")
    ids = set(body.task_ids)
    cluster_id = caller.cluster.id
    ours = svc.store.cluster_task_ids(ids, cluster_id, active_only=False)
    active = svc.store.cluster_task_ids(ours, cluster_id, active_only=True)
    return {"task_ids": sorted(ids - (ours - active))}


@router.get("/2/runner/revisions/{revision_id}")
def leased_revision(svc: ServicesDep, caller: RunnerDep, revision_id: TaskId) -> dict[str, Any]:
    """A code revision that one of this runner's leased tasks runs (secret env included)."""
    return {"revision": revision_to_wire(svc.store.leased_revision(revision_id, caller.runner_id))}


@router.get("/2/runner/revisions/{revision_id}/archive", response_class=Response)
def leased_revision_archive(svc: ServicesDep, caller: RunnerDep, revision_id: TaskId) -> Response:
    data = svc.store.leased_revision_archive(revision_id, caller.runner_id)
    if data is None:
        raise NotFound("This code revision has no archive (it runs an image only)")
    return Response(data, media_type="application/zip")


# --- reports (each conditional on the lease) -------------------------------------------------


def _of_the_cluster(svc: Services, caller: RunnerCaller, task_id: str) -> None:
    """NotFound unless the task is one of the caller's cluster's: a report about any other task
    writes nothing, not even the refusal in that task's history."""
    if not svc.store.cluster_task_ids([task_id], caller.cluster.id, active_only=False):
        raise NotFound("Task not found in this cluster")


class RunningIn(Strict):
    start_time: float
    container_id: str = ""
    created_at: float | None = None  # when the container was created (its event, in the same write)


@router.post("/2/runner/tasks/{task_id}/running")
def report_running(svc: ServicesDep, caller: RunnerDep, task_id: TaskId, body: RunningIn) -> dict[str, bool]:
    _of_the_cluster(svc, caller, task_id)
    store = svc.store
    ok = store.mark_running(task_id, caller.runner_id, body.start_time, body.container_id, body.created_at)
    if not ok and store.cluster_task_ids([task_id], caller.cluster.id, active_only=True):
        task = store.load_task(task_id)  # an earlier try of this request may have written it
        ok = (
            task.runner_id == caller.runner_id
            and task.status is TaskStatus.RUNNING
            and task.start_time == body.start_time
        )
    return {"ok": ok}


class UnreportedStartIn(Strict):
    container_id: str
    owner: str = ""


@router.post("/2/runner/tasks/{task_id}/unreported_start")
def unreported_start(
    svc: ServicesDep, caller: RunnerDep, task_id: TaskId, body: UnreportedStartIn
) -> dict[str, bool]:
    """A container of one of the cluster's tasks that started without its start being counted."""
    if not svc.store.cluster_task_ids([task_id], caller.cluster.id, active_only=False):
        raise NotFound("Task not found in this cluster")
    owner = body.owner if body.owner.endswith(f"@{caller.cluster.id}") else caller.runner_id
    return {"ok": svc.store.record_unreported_start(task_id, body.container_id, owner)}


@router.post("/2/runner/tasks/{task_id}/finish")
def finish(svc: ServicesDep, caller: RunnerDep, task_id: TaskId, body: dict[str, Any]) -> dict[str, bool]:
    try:
        outcome = outcome_from_wire(body)
    except (TypeError, ValueError, KeyError) as exc:
        raise ClientError(f"not a task outcome: {exc}") from None
    _of_the_cluster(svc, caller, task_id)
    store = svc.store
    if task_id not in store.leased_task_ids(caller.runner_id):
        task = store.load_task(task_id)
        if task.runner_id == caller.runner_id and task.status is outcome.status:
            return {"ok": True}  # an earlier try of this request wrote it
    return {"ok": store.finish(task_id, caller.runner_id, outcome)}


class ReasonIn(Strict):
    reason: str


@router.post("/2/runner/tasks/{task_id}/requeue")
def requeue(svc: ServicesDep, caller: RunnerDep, task_id: TaskId, body: ReasonIn) -> dict[str, Any]:
    """Back to the queue after an infrastructure failure, on the server's budget and backoff."""
    _of_the_cluster(svc, caller, task_id)
    settings = svc.settings
    task = svc.store.requeue_after_infra_failure(
        task_id,
        caller.runner_id,
        body.reason[:2000],
        settings.infra_retry_budget,
        settings.infra_retry_base_delay_s,
        settings.infra_retry_max_delay_s,
    )
    return {"task": None if task is None else task_to_wire(task)}


@router.post("/2/runner/tasks/{task_id}/release")
def release(svc: ServicesDep, caller: RunnerDep, task_id: TaskId, body: ReasonIn) -> dict[str, bool]:
    _of_the_cluster(svc, caller, task_id)
    return {"ok": svc.store.release(task_id, caller.runner_id, body.reason[:2000])}


@router.post("/2/runner/tasks/{task_id}/log")
async def append_log(
    svc: ServicesDep,
    caller: RunnerDep,
    task_id: TaskId,
    request: Request,
    start: Annotated[int, Query(ge=0)],
    output_bytes: Annotated[int | None, Query(ge=0)] = None,
) -> dict[str, int]:
    """Log bytes (the raw body) that the runner has from byte ``start`` of the task's log on;
    written once whatever the retries. 409 when the task is not leased to the runner."""
    data = await request.body()
    if len(data) > MAX_LOG_CHUNK:
        raise ClientError(f"a log chunk is at most {MAX_LOG_CHUNK} bytes")
    if not data:
        raise ClientError("an empty log chunk")
    size = await anyio.to_thread.run_sync(
        svc.store.append_log_at, task_id, caller.runner_id, start, data, output_bytes
    )
    return {"log_size": size}


class ProgressReportIn(Strict):
    percent: int | None = None
    msg: str | None = None


@router.post("/2/runner/tasks/{task_id}/progress")
def report_progress(
    svc: ServicesDep, caller: RunnerDep, task_id: TaskId, body: ProgressReportIn
) -> dict[str, bool]:
    """The worker's progress, as its channel said (``ok`` False when the lease is lost)."""
    return {"ok": svc.store.report_progress(task_id, caller.runner_id, body.percent, body.msg)}


class EventIn(Strict):
    kind: str
    detail: str = ""
    container_id: str | None = None


@router.post("/2/runner/tasks/{task_id}/events")
def add_event(svc: ServicesDep, caller: RunnerDep, task_id: TaskId, body: EventIn) -> dict[str, str]:
    if body.kind not in {kind.value for kind in RUNNER_EVENTS}:
        raise ClientError(f"a runner records only {sorted(k.value for k in RUNNER_EVENTS)}")
    svc.store.leased_task(task_id, caller.runner_id)
    svc.store.add_event(task_id, EventKind(body.kind), body.detail[:2000], body.container_id)
    return {"msg": "Recorded"}
