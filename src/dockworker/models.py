"""Frozen value objects passed between the store, the runner and the API."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .states import EventKind, TaskStatus

# A task's progress msg, however it is reported (IronWorker: 64 KB).
MAX_PROGRESS_MSG = 64 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class Project:
    id: str
    name: str
    created_at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenInfo:
    """A token's record; the secret itself is never stored (only its SHA-256 digest)."""

    id: str
    project_id: str | None  # None: an admin token
    name: str
    created_at: float
    expires_at: float | None = None
    revoked_at: float | None = None
    last_used_at: float | None = None

    @property
    def is_admin(self) -> bool:
        return self.project_id is None

    def usable_at(self, moment: float) -> bool:
        """Neither revoked nor expired at ``moment``."""
        return self.revoked_at is None and (self.expires_at is None or moment < self.expires_at)


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
    config_secret: bool = False  # the config is never shown by the API
    env_vars: dict[str, str] = field(default_factory=dict)
    secret_env_vars: dict[str, str] = field(default_factory=dict)  # values never shown by the API
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
    retries: int | None = None
    retries_delay: int | None = None
    schedule_id: str | None = None


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
    retries: int | None = None
    retries_delay: int | None = None
    output_bytes: int = 0
    cpu_time_ms: int | None = None
    peak_memory_bytes: int | None = None

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
    """What a runner reports at the end of a task: always a terminal state."""

    status: TaskStatus
    msg: str
    exit_code: int | None = None
    # What the container used (engine.ResourceUsage); None when no container ran or the engine
    # could not say.
    cpu_time_ms: int | None = None
    peak_memory_bytes: int | None = None

    def __post_init__(self) -> None:
        if not self.status.is_terminal:
            raise ValueError(f"a task outcome is a terminal state, not {self.status}")


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskEvent:
    at: float
    kind: EventKind
    detail: str
    container_id: str | None = None  # the container the event is about, if any


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskFilter:
    code_name: str | None = None
    statuses: frozenset[TaskStatus] = frozenset()
    from_time: float | None = None
    to_time: float | None = None
    page: int = 0
    per_page: int = 30
    schedule_id: str | None = None
    original_task_id: str | None = None
    # Keyset paging: the tasks listed after this one (listings run newest first); page is ignored.
    after_id: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ScheduleSpec:
    """What a schedule is asked to do (IronWorker's fields, plus cron and timezone)."""

    code_name: str
    payload: str = ""
    start_at: float | None = None
    run_every: int | None = None
    cron: str | None = None
    timezone: str = "UTC"
    run_times: int | None = None
    end_at: float | None = None
    priority: int = 0
    timeout: int | None = None
    delay: int = 0
    label: str | None = None
    cluster: str = "default"


@dataclass(frozen=True, slots=True, kw_only=True)
class Schedule:
    id: str
    project_id: str
    code_name: str
    payload: str
    start_at: float
    run_every: int | None
    cron: str | None
    timezone: str
    run_times: int | None
    end_at: float | None
    priority: int
    timeout: int | None
    delay: int
    label: str | None
    cluster: str
    status: str
    msg: str | None
    run_count: int
    last_run_time: float | None
    next_start: float | None
    created_at: float
    updated_at: float

    @classmethod
    def from_row(cls, row: Any) -> Schedule:
        values = dict(row._mapping)
        return cls(**{f.name: values[f.name] for f in dataclasses.fields(cls)})


@dataclass(frozen=True, slots=True, kw_only=True)
class RunnerInfo:
    id: str
    host: str
    clusters: tuple[str, ...]
    slots: int
    running: int
    version: str
    started_at: float
    last_heartbeat: float
    stopped_at: float | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Cluster:
    """A named group of runners that its owner's tasks (and those of the projects it is shared
    with) can be sent to with ``cluster``: its id. Its runners authenticate with the cluster's
    token, kept as a digest only (``token_active`` False: revoked, no runner may connect)."""

    id: str
    project_id: str  # the owner
    name: str
    description: str | None
    memory_mb: int
    public_key: str | None  # PEM: payloads queued for this cluster must be encrypted for it
    shared_with: tuple[str, ...]
    token_active: bool
    token_created_at: float | None
    created_at: float
    updated_at: float

    def usable_by(self, project_id: str) -> bool:
        return project_id == self.project_id or project_id in self.shared_with


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterChanges:
    """What ``update_cluster`` sets; ``None`` leaves a field as it is (``clear_public_key``
    removes the key)."""

    name: str | None = None
    description: str | None = None
    memory_mb: int | None = None
    public_key: str | None = None
    clear_public_key: bool = False


# --- what the HUD and /metrics read (store/analytics_sql.py) ---------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class SeriesPoint:
    """One bucket of one group (a cluster or a code package's name) in a time series."""

    group: str
    bucket: int  # the bucket's start, epoch seconds
    tasks: int
    failed: int
    duration_s: float
    cpu_s: float  # the CPU time runners recorded (tasks without it count for nothing)


@dataclass(frozen=True, slots=True, kw_only=True)
class UsageDay:
    day: int  # the day's start (UTC), epoch seconds
    cluster: str
    priority: int
    tasks_run: int
    compute_s: float
    cpu_s: float = 0.0  # the CPU time of the tasks whose usage was recorded
    peak_memory_bytes: int | None = None  # the largest peak of one task; None: none recorded


@dataclass(frozen=True, slots=True, kw_only=True)
class StatusCount:
    """How many tasks of one package are in one state (and, for active states, one priority)."""

    project_id: str
    code_name: str
    status: str
    count: int
    priority: int | None = None
    oldest_runnable: float | None = None  # queued tasks: the earliest run_at that is due


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskFact:
    """A task event with what its task says now: what /metrics observes as events happen."""

    event_id: int
    kind: str
    project_id: str
    code_name: str
    priority: int
    run_at: float
    start_time: float | None
    end_time: float | None
    cpu_time_ms: int | None = None
