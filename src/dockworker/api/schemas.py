"""Request and response shapes at the API edge (IronWorker v2 field names)."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .. import timeutil
from ..models import MAX_PROGRESS_MSG, Code, CodeRevision, RunnerInfo, Schedule, Task

NAME_PATTERN = re.compile(r"^[^\x00-\x1f\x7f/\\]+$")
ENV_NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
RESERVED_ENV = frozenset(
    {"TASK_ID", "TASK_DIR", "PAYLOAD_FILE", "CONFIG_FILE", "PROGRESS_FILE", "CODE_DIR", "HOME"}
)
IMAGE_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._/:@-]*$")
FILTERED = "[FILTERED]"  # shown instead of a secret value


def _contains_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_contains_nul(k) or _contains_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_contains_nul(item) for item in value)
    return False


class Strict(BaseModel):
    """Unknown fields and wrong types are refused, and so are NUL characters in any text (a
    container's environment and command cannot hold them, nor can PostgreSQL's text)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    @field_validator("*")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        if _contains_nul(value):
            raise ValueError("contains a NUL character")
        return value


def check_name(value: str) -> str:
    if value != value.strip() or not NAME_PATTERN.fullmatch(value):
        raise ValueError("must be printable characters, without slashes or surrounding spaces")
    return value


class CodeUpload(Strict):
    """The ``data`` part of ``POST /codes``."""

    name: Annotated[str, Field(min_length=1, max_length=255)]
    image: Annotated[str | None, Field(max_length=255)] = None
    stack: Annotated[str | None, Field(max_length=100)] = None
    command: Annotated[str | None, Field(max_length=4096)] = None
    runtime: Annotated[str | None, Field(max_length=50)] = None
    file_name: Annotated[str | None, Field(max_length=1024)] = None
    config: str | None = None
    config_secret: bool | None = None
    env_vars: dict[str, str] | None = None
    secret_env_vars: dict[str, str] | None = None
    max_concurrency: Annotated[int | None, Field(ge=-1, le=10_000)] = None
    retries: Annotated[int | None, Field(ge=0, le=10)] = None
    retries_delay: Annotated[int | None, Field(ge=0, le=7 * 24 * 3600)] = None
    default_priority: Annotated[int | None, Field(ge=0, le=2)] = None
    memory_mb: Annotated[int | None, Field(ge=16)] = None
    cpus: Annotated[float | None, Field(gt=0)] = None
    pids: Annotated[int | None, Field(ge=16)] = None
    host: str | None = None  # sent by some IronWorker clients; ignored

    _name = field_validator("name")(check_name)

    @field_validator("image")
    @classmethod
    def _image(cls, value: str | None) -> str | None:
        if value is not None and not IMAGE_PATTERN.fullmatch(value):
            raise ValueError("is not a valid Docker image reference")
        return value

    @field_validator("env_vars", "secret_env_vars")
    @classmethod
    def _env(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        for key in value or {}:
            if not ENV_NAME_PATTERN.fullmatch(key):
                raise ValueError(f"{key!r} is not a valid environment variable name")
            if key in RESERVED_ENV:
                raise ValueError(f"{key} is set by dockworker and cannot be overridden")
        return value


class TaskIn(Strict):
    code_name: Annotated[str, Field(min_length=1, max_length=255)]
    payload: str | None = None
    priority: Annotated[int | None, Field(ge=0, le=2)] = None
    timeout: Annotated[int | None, Field(ge=0)] = None
    delay: Annotated[int | None, Field(ge=0)] = None
    label: Annotated[str | None, Field(max_length=255)] = None
    cluster: Annotated[str | None, Field(min_length=1, max_length=100)] = None
    retries: Annotated[int | None, Field(ge=0, le=10)] = None
    retries_delay: Annotated[int | None, Field(ge=0, le=7 * 24 * 3600)] = None
    name: str | None = None  # the Python client sends the code name again here; ignored
    sync: bool | None = None  # experimental IronWorker flag; accepted and ignored


class TasksIn(Strict):
    tasks: Annotated[list[TaskIn], Field(min_length=1)]


class ProgressIn(Strict):
    percent: Annotated[int | None, Field(ge=0, le=100)] = None
    msg: Annotated[str | None, Field(max_length=MAX_PROGRESS_MSG)] = None


class RetryIn(Strict):
    delay: Annotated[int, Field(ge=0)] = 0


def task_json(task: Task, with_payload: bool = False) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": task.id,
        "project_id": task.project_id,
        "code_id": task.code_id,
        "code_history_id": task.revision_id,
        "code_name": task.code_name,
        "code_rev": task.code_rev,
        "status": task.status.value,
        "msg": task.msg,
        "priority": task.priority,
        "timeout": task.timeout,
        "delay": task.delay,
        "label": task.label,
        "cluster": task.cluster,
        "created_at": timeutil.rfc3339(task.created_at),
        "updated_at": timeutil.rfc3339(task.updated_at),
        "start_time": timeutil.rfc3339(task.start_time),
        "end_time": timeutil.rfc3339(task.end_time),
        "duration": task.duration_ms,
        "percent": task.percent,
        "exit_code": task.exit_code,
        "retry_count": task.retry_count,
        "original_task_id": task.original_task_id,
        "retry_task_id": task.retry_task_id,
        "schedule_id": task.schedule_id,
        "log_size": task.log_size,
        "run_times": 1,
        "cpu_time_ms": task.cpu_time_ms,
        "peak_memory_bytes": task.peak_memory_bytes,
    }
    if with_payload:
        data["payload"] = task.payload
    return data


class TaskBody(BaseModel):
    """A task as the API answers it (``task_json``); documents the answer, does not build it."""

    id: str
    project_id: str
    code_id: str
    code_history_id: str = Field(description="the code package revision the task runs")
    code_name: str
    code_rev: int
    status: str = Field(description="queued, preparing, running, complete, error, cancelled, killed, timeout")
    msg: str | None
    priority: int
    timeout: int = Field(description="seconds, counted from the container's start")
    delay: int
    label: str | None
    cluster: str
    created_at: str
    updated_at: str
    start_time: str | None
    end_time: str | None
    duration: int | None = Field(description="milliseconds the container ran")
    percent: int | None
    exit_code: int | None
    retry_count: int
    original_task_id: str | None
    retry_task_id: str | None
    schedule_id: str | None
    log_size: int
    run_times: int
    cpu_time_ms: int | None = Field(
        description="CPU time the task's container used (all its processes), from the engine's cgroup "
        "accounting once it ended; null until then, or when the engine could not say"
    )
    peak_memory_bytes: int | None = Field(
        description="the container's highest memory use (page cache and its tmpfs files included), "
        "from the engine's cgroup accounting; null until it ended, or when the engine could not say"
    )
    payload: str | None = Field(default=None, description="only in the answer for one task")


class TaskListBody(BaseModel):
    tasks: list[TaskBody]
    next_cursor: str | None = Field(default=None, description="present when there may be a next page")


def _revision_fields(revision: CodeRevision) -> dict[str, Any]:
    spec = revision.spec
    return {
        "image": spec.image,
        "stack": spec.stack,
        "runtime": spec.runtime,
        "file_name": spec.file_name,
        "command": spec.command,
        "config": FILTERED if spec.config_secret and spec.config is not None else spec.config,
        "config_secret": spec.config_secret,
        "env_vars": spec.env_vars,
        "secret_env_vars": dict.fromkeys(spec.secret_env_vars, FILTERED),
        "max_concurrency": spec.max_concurrency,
        "retries": spec.retries,
        "retries_delay": spec.retries_delay,
        "default_priority": spec.default_priority,
        "memory_mb": spec.memory_mb,
        "cpus": spec.cpus,
        "pids": spec.pids,
    }


def code_json(code: Code) -> dict[str, Any]:
    revision = code.latest_revision
    return {
        "id": code.id,
        "project_id": code.project_id,
        "name": code.name,
        "rev": code.rev,
        "created_at": timeutil.rfc3339(code.created_at),
        "updated_at": timeutil.rfc3339(code.updated_at),
        "latest_history_id": revision.id,
        "latest_change": timeutil.rfc3339(revision.created_at),
        "latest_checksum": revision.checksum,
        "code_size": revision.code_size,
        "paused": code.paused,
        **_revision_fields(revision),
    }


def revision_json(revision: CodeRevision, code_name: str) -> dict[str, Any]:
    return {
        "id": revision.id,
        "code_id": revision.code_id,
        "project_id": revision.project_id,
        "name": code_name,
        "rev": revision.rev,
        "created_at": timeutil.rfc3339(revision.created_at),
        "checksum": revision.checksum,
        "code_size": revision.code_size,
        **_revision_fields(revision),
    }


Moment = Annotated[str | int | float, Field(description="RFC 3339 time, or epoch seconds")]


class ScheduleIn(Strict):
    code_name: Annotated[str, Field(min_length=1, max_length=255)]
    payload: str | None = None
    start_at: Moment | None = None
    run_every: Annotated[int | None, Field(ge=1, le=10 * 366 * 86400)] = None
    cron: Annotated[str | None, Field(min_length=1, max_length=200)] = None
    timezone: Annotated[str | None, Field(min_length=1, max_length=64)] = None
    run_times: Annotated[int | None, Field(ge=1, le=1_000_000_000)] = None
    end_at: Moment | None = None
    priority: Annotated[int | None, Field(ge=0, le=2)] = None
    timeout: Annotated[int | None, Field(ge=0)] = None
    delay: Annotated[int | None, Field(ge=0)] = None
    task_delay: Annotated[int | None, Field(ge=0)] = None
    label: Annotated[str | None, Field(max_length=255)] = None
    cluster: Annotated[str | None, Field(min_length=1, max_length=100)] = None
    name: str | None = None  # sent by IronWorker clients; ignored
    sync: bool | None = None  # sent by the Python client; ignored
    max_concurrency: int | None = None  # sent by the Go client; a code package setting here


class SchedulesIn(Strict):
    schedules: Annotated[list[ScheduleIn], Field(min_length=1, max_length=100)]


def schedule_json(schedule: Schedule, description: str, next_runs: list[float]) -> dict[str, Any]:
    return {
        "id": schedule.id,
        "project_id": schedule.project_id,
        "code_name": schedule.code_name,
        "payload": schedule.payload,
        "status": schedule.status,
        "msg": schedule.msg,
        "start_at": timeutil.rfc3339(schedule.start_at),
        "end_at": timeutil.rfc3339(schedule.end_at),
        "run_every": schedule.run_every,
        "cron": schedule.cron,
        "timezone": schedule.timezone,
        "run_times": schedule.run_times,
        "run_count": schedule.run_count,
        "last_run_time": timeutil.rfc3339(schedule.last_run_time),
        "next_start": timeutil.rfc3339(schedule.next_start),
        "priority": schedule.priority,
        "timeout": schedule.timeout,
        "delay": schedule.delay,
        "task_delay": schedule.delay,
        "label": schedule.label,
        "cluster": schedule.cluster,
        "created_at": timeutil.rfc3339(schedule.created_at),
        "updated_at": timeutil.rfc3339(schedule.updated_at),
        "description": description,
        "next_runs": [timeutil.rfc3339(moment) for moment in next_runs],
    }


def runner_json(runner: RunnerInfo, alive: bool) -> dict[str, Any]:
    return {
        "id": runner.id,
        "host": runner.host,
        "clusters": list(runner.clusters),
        "slots": runner.slots,
        "running": runner.running,
        "version": runner.version,
        "started_at": timeutil.rfc3339(runner.started_at),
        "last_heartbeat": timeutil.rfc3339(runner.last_heartbeat),
        "stopped_at": timeutil.rfc3339(runner.stopped_at),
        "alive": alive,
    }
