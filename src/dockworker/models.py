"""Frozen value objects passed between the store, the runner and the API."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .states import TaskStatus


@dataclass(frozen=True, slots=True, kw_only=True)
class Project:
    id: str
    name: str
    created_at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenInfo:
    id: str
    project_id: str | None  # None: an admin token
    name: str
    created_at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class CodeSpec:
    """What an upload defines: one revision of a code package."""

    name: str
    image: str | None = None
    stack: str | None = None
    command: str | None = None
    runtime: str | None = None
    file_name: str | None = None
    config: str | None = None
    env_vars: dict[str, str] = field(default_factory=dict)
    max_concurrency: int | None = None
    retries: int = 0
    retries_delay: int = 0
    default_priority: int = 0
    memory_mb: int | None = None
    cpus: float | None = None
    pids: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class CodeRevision:
    id: str
    code_id: str
    project_id: str
    rev: int
    spec: CodeSpec
    checksum: str | None
    code_size: int | None
    created_at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Code:
    id: str
    project_id: str
    name: str
    rev: int
    latest_revision: CodeRevision
    paused: bool
    created_at: float
    updated_at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class NewTask:
    code_name: str
    payload: str = ""
    priority: int | None = None
    timeout: int | None = None
    delay: int = 0
    label: str | None = None
    cluster: str = "default"


@dataclass(frozen=True, slots=True, kw_only=True)
class Task:
    id: str
    project_id: str
    code_id: str
    code_name: str
    code_rev: int
    revision_id: str
    status: TaskStatus
    msg: str | None
    priority: int
    timeout: int
    delay: int
    label: str | None
    cluster: str
    payload: str
    created_at: float
    updated_at: float
    run_at: float
    start_time: float | None
    end_time: float | None
    percent: int | None
    exit_code: int | None
    retry_count: int
    original_task_id: str | None
    retry_task_id: str | None
    runner_id: str | None
    lease_expires_at: float | None
    cancel_requested: bool
    attempts: int
    infra_attempts: int
    log_size: int
    schedule_id: str | None

    @property
    def duration_ms(self) -> int | None:
        if self.start_time is None:
            return None
        if self.end_time is None:
            return None
        return round((self.end_time - self.start_time) * 1000)

    @classmethod
    def from_row(cls, row: Any) -> Task:
        values = dict(row._mapping)
        values["status"] = TaskStatus(values["status"])
        values["cancel_requested"] = bool(values["cancel_requested"])
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskOutcome:
    """What a runner reports at the end of a task."""

    status: TaskStatus
    msg: str
    exit_code: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskEvent:
    at: float
    kind: str
    detail: str


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskFilter:
    code_name: str | None = None
    statuses: frozenset[TaskStatus] = frozenset()
    from_time: float | None = None
    to_time: float | None = None
    page: int = 0
    per_page: int = 30
