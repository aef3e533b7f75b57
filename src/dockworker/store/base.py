"""The store interface. Everything the API, the runner and the CLI persist goes through it.

Errors: ``NotFound`` / ``Conflict`` / ``ClientError`` for what the caller asked; when the
database itself fails, ``StoreUnavailable`` (cannot be reached, or too busy) or ``StorageFull``
(its disk is full); in every case nothing was written. Task states move only along
``states.TRANSITIONS``.

Leases: a claimed task is leased to one runner until ``lease_expires_at``. Every runner-side
report is conditional on the lease: when the task is no longer leased to the reporting runner
(the lease expired and the housekeeper took the task back, or the task was cancelled and
finished meanwhile) or the table does not allow the move, the report writes nothing, and the
method says so as documented below (``False``, ``None``, or the ids left out).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Protocol

from ..models import (
    Cluster,
    ClusterChanges,
    Code,
    CodeRevision,
    CodeSpec,
    NewTask,
    Project,
    RunnerInfo,
    Schedule,
    ScheduleSpec,
    SeriesPoint,
    StatusCount,
    Task,
    TaskEvent,
    TaskFact,
    TaskFilter,
    TaskOutcome,
    TokenInfo,
    UsageDay,
)
from ..states import EventKind
from .identity import RunnerIdentity


class Cadence(Protocol):
    """When a schedule's slots fall (``scheduler.timing.Cadence``)."""

    def next_slot(self, after: float, fired: int = 0) -> float | None: ...
    def latest_due(self, first_due: float, now: float) -> float: ...


# The cadence of a schedule (or spec) from its start (``scheduler.timing.cadence_of``).
CadenceOf = Callable[[Schedule | ScheduleSpec, float], Cadence]


class Store(Protocol):
    def migrate(self) -> None:
        """Bring the schema to the current version (idempotent; hosts starting together on
        PostgreSQL migrate one after the other)."""
        ...

    def close(self) -> None:
        """Write what is pending (token uses) and close every connection."""
        ...

    def installation_id(self) -> str:
        """A random id made once per database (containers carry it)."""
        ...

    # --- projects and tokens (a token with project_id None is an admin token) ---------------------

    def create_project(self, name: str) -> Project: ...
    def get_project(self, project_id: str) -> Project:
        """Raises NotFound."""
        ...

    def list_projects(self) -> list[Project]: ...
    def create_token(
        self, project_id: str | None, name: str, expires_at: float | None = None
    ) -> tuple[str, TokenInfo]:
        """A new token: its secret (kept nowhere) and its record."""
        ...

    def authenticate(self, token: str) -> TokenInfo | None:
        """The token's record, or None when unknown, revoked or expired. Notes the use in
        ``last_used_at`` (at most once a minute, written in batches; never fails for that)."""
        ...

    def list_tokens(self, project_id: str | None) -> list[TokenInfo]: ...
    def get_token(self, token_id: str) -> TokenInfo: ...
    def revoke_token(self, token_id: str) -> TokenInfo: ...

    # --- code packages --------------------------------------------------------------------------

    def save_code(self, project_id: str, spec: CodeSpec, archive: bytes | None, checksum: str | None) -> Code:
        """A new package, or a new revision of the package of that name."""
        ...

    def get_code(self, project_id: str, code_id: str) -> Code: ...
    def find_code(self, project_id: str, name: str) -> Code | None: ...
    def list_codes(self, project_id: str, page: int, per_page: int) -> list[Code]: ...
    def delete_code(self, project_id: str, code_id: str) -> None:
        """Delete the package and its revisions; its queued tasks end cancelled."""
        ...

    def list_revisions(
        self, project_id: str, code_id: str, page: int, per_page: int
    ) -> list[CodeRevision]: ...
    def get_revision(self, revision_id: str) -> CodeRevision: ...
    def get_archive(self, project_id: str, code_id: str, rev: int | None) -> tuple[CodeRevision, bytes]: ...
    def get_revision_archive(self, revision_id: str) -> bytes | None: ...
    def set_paused(self, project_id: str, code_id: str, paused: bool) -> bool:
        """Pause or resume the package's queue; whether that changed anything."""
        ...

    def cancel_all(self, project_id: str, code_id: str) -> tuple[int, int]:
        """Cancel the package's queued tasks and ask runners to stop its active ones:
        (cancelled, stopping). Its cost does not depend on a limit of bind parameters."""
        ...

    def code_stats(self, project_id: str, code_id: str, since: float, until: float) -> dict[str, int]:
        """Tasks created in [since, until] per status (every status present)."""
        ...

    # --- schedules (slots are computed by ``cadence_of``, the scheduler's) ----------------------

    def create_schedules(
        self, project_id: str, specs: Sequence[ScheduleSpec], cadence_of: CadenceOf
    ) -> list[Schedule]: ...
    def get_schedule(self, project_id: str, schedule_id: str) -> Schedule: ...
    def list_schedules(self, project_id: str, page: int, per_page: int) -> list[Schedule]: ...
    def update_schedule(
        self, project_id: str, schedule_id: str, spec: ScheduleSpec, cadence_of: CadenceOf
    ) -> Schedule: ...
    def cancel_schedule(self, project_id: str, schedule_id: str) -> Schedule: ...
    def due_schedule_ids(self, now: float, limit: int = 100) -> list[str]: ...
    def fire_schedule(
        self, schedule_id: str, now: float, max_timeout: int, cadence_of: CadenceOf
    ) -> str | None:
        """Queue the task of the schedule's due slot, once however many schedulers try: the id
        of the task, or None (nothing due, or another scheduler fired it)."""
        ...

    # --- runners --------------------------------------------------------------------------------

    def register_runner(
        self, runner_id: str, host: str, clusters: Sequence[str], slots: int, version: str
    ) -> None: ...
    def runner_heartbeat(self, runner_id: str, running: int) -> None: ...
    def unregister_runner(self, runner_id: str) -> None: ...
    def list_runners(self) -> list[RunnerInfo]: ...
    def live_clusters(self, max_age: float) -> set[str]: ...
    def hold_runner_identity(self, runner_id: str) -> RunnerIdentity: ...

    # --- clusters (their runners connect with the cluster's token; ``project_id`` None: an admin) -

    def create_cluster(
        self,
        project_id: str,
        name: str,
        memory_mb: int,
        description: str | None = None,
        public_key: str | None = None,
    ) -> tuple[str, Cluster]:
        """A new cluster owned by the project, and its token (shown once, kept as a digest).
        Conflict when the project has a cluster of that name."""
        ...

    def get_cluster(self, project_id: str | None, cluster_id: str) -> Cluster:
        """A cluster the project owns or is shared; NotFound otherwise."""
        ...

    def list_clusters(self, project_id: str | None) -> list[Cluster]: ...
    def update_cluster(self, project_id: str | None, cluster_id: str, changes: ClusterChanges) -> Cluster:
        """Owner only (Forbidden for a project it is shared with)."""
        ...

    def delete_cluster(self, project_id: str | None, cluster_id: str) -> None:
        """Owner only; Conflict while tasks or schedules still use it."""
        ...

    def share_cluster(self, project_id: str | None, cluster_id: str, with_project: str) -> Cluster: ...
    def unshare_cluster(self, project_id: str | None, cluster_id: str, with_project: str) -> Cluster: ...
    def rotate_cluster_token(self, project_id: str | None, cluster_id: str) -> tuple[str, Cluster]:
        """A new token; the old one is refused from now on."""
        ...

    def revoke_cluster_token(self, project_id: str | None, cluster_id: str) -> Cluster: ...
    def cluster_counts(self, cluster_id: str) -> dict[str, int]:
        """The cluster's queued and active tasks per status."""
        ...

    def authenticate_cluster(self, token: str) -> Cluster | None:
        """The cluster whose current token this is (nothing cached), or None."""
        ...

    # --- remote runners (the API's runner routes; see ``runner/link.py``) -----------------------

    def open_runner_session(
        self, runner_id: str, cluster_id: str, host: str, ttl: float, resume: str | None = None
    ) -> str:
        """Hold the runner id for one process: the session's secret. AlreadyRunning while a live
        session holds it, unless ``resume`` is that session's secret."""
        ...

    def check_runner_session(self, runner_id: str, cluster_id: str, secret: str) -> bool: ...
    def renew_runner_session(self, runner_id: str, secret: str, ttl: float) -> bool:
        """False when the session was taken over by another process."""
        ...

    def close_runner_session(self, runner_id: str, secret: str) -> None: ...
    def leased_task(self, task_id: str, runner_id: str) -> Task:
        """The task while it is leased to the runner; NotFound otherwise."""
        ...

    def leased_revision(self, revision_id: str, runner_id: str) -> CodeRevision: ...
    def leased_revision_archive(self, revision_id: str, runner_id: str) -> bytes | None: ...
    def cluster_task_ids(self, task_ids: Iterable[str], cluster_id: str, active_only: bool) -> set[str]: ...
    def append_log_at(
        self, task_id: str, runner_id: str, start: int, data: bytes, output_bytes: int | None
    ) -> int:
        """Append what the runner has from byte ``start`` of the log on, once whatever the
        retries; the log's size after. LeaseLost when the task is not leased to the runner."""
        ...

    # --- tasks, the API's side ------------------------------------------------------------------

    def enqueue(self, project_id: str, new_tasks: Sequence[NewTask], max_timeout: int) -> list[Task]:
        """Queue a batch, all or nothing (NotFound for an unknown package, ClientError for a
        timeout above ``max_timeout``), as one multi-row insert."""
        ...

    def get_task(self, project_id: str, task_id: str) -> Task: ...
    def load_task(self, task_id: str) -> Task:
        """Any project's task (for the runner and the housekeeper)."""
        ...

    def list_tasks(self, project_id: str, task_filter: TaskFilter) -> list[Task]:
        """Newest first; by page, or after a task (keyset paging: ``after_id``)."""
        ...

    def request_cancel(self, project_id: str, task_id: str) -> Task:
        """A queued task ends cancelled at once; an active one gets a cancel request that its
        runner carries out. Conflict when it has already finished."""
        ...

    def set_progress(self, project_id: str, task_id: str, percent: int | None, msg: str | None) -> None: ...
    def retry(self, project_id: str, task_id: str, delay: int) -> Task:
        """Queue a finished task again as a new task; returns the new task."""
        ...

    # --- tasks, the runner's side (conditional on the lease, see above) -------------------------

    def claim(
        self, runner_id: str, clusters: Sequence[str], lease_ttl: float, starvation_s: float = 300.0
    ) -> Task | None:
        """Lease the next task (one atomic statement): starved tasks oldest first, then by
        priority and age; honours delays, clusters, paused packages and max_concurrency across
        runners. None when nothing is claimable."""
        ...

    def mark_running(
        self,
        task_id: str,
        runner_id: str,
        start_time: float,
        container_id: str = "",
        created_at: float | None = None,
    ) -> bool:
        """preparing → running, counting the container start, with the progress (percent, msg)
        cleared for the new attempt. False when the lease is lost (or the task is not
        preparing): nothing is written but, with ``created_at`` (when the container was
        created), the ``container_created`` event, which is written in any case."""
        ...

    def record_unreported_start(self, task_id: str, container_id: str, runner_id: str) -> bool:
        """Count a start of this container that no report counted, whatever the task's state
        and lease. False when it was counted already (or the task is gone)."""
        ...

    def finish(self, task_id: str, runner_id: str, outcome: TaskOutcome) -> bool:
        """Write the terminal outcome (a user retry follows ``error``/``timeout`` when the budget
        allows); an outcome with an empty ``msg`` keeps the task's (the worker's progress msg).
        False when the lease is lost or the table forbids the move from the current state
        (``complete`` from ``preparing``...): nothing changes but a ``late_report_refused``
        event."""
        ...

    def report_progress(self, task_id: str, runner_id: str, percent: int | None, msg: str | None) -> bool:
        """Set the progress a running task's worker reported (None leaves a field as it is).
        False when the lease is lost: nothing is written, and no event recorded (reports come
        often). ClientError for a percent outside 0-100, a msg over 64 KiB characters or with a
        NUL."""
        ...

    def requeue_after_infra_failure(
        self, task_id: str, runner_id: str, reason: str, budget: int, delay: float, max_delay: float = 60.0
    ) -> Task | None:
        """Back to the queue with backoff on the infrastructure budget (``error`` once spent,
        ``cancelled`` if a cancel was requested); the task as it is now. None when the lease is
        lost (a ``late_report_refused`` event is recorded)."""
        ...

    def release(self, task_id: str, runner_id: str, reason: str) -> bool:
        """Back to the queue at its old place without spending a budget (``cancelled`` if a
        cancel was requested). False when the lease is lost."""
        ...

    def heartbeat(self, runner_id: str, task_ids: Iterable[str], lease_ttl: float) -> set[str]:
        """Renew the leases; returns the ids still leased to the runner (a lost lease is left
        out: the runner stops that container)."""
        ...

    def cancel_requested(self, runner_id: str) -> set[str]:
        """The runner's leased tasks with a cancel request (a lost lease is left out)."""
        ...

    def expire_leases(self, budget: int, delay: float, max_delay: float = 60.0) -> list[Task]:
        """Take back every task whose lease expired, as an infrastructure failure, exactly once
        whichever housekeeper does it; the tasks as they are now."""
        ...

    def leased_task_ids(self, runner_id: str) -> set[str]: ...
    def active_among(self, task_ids: Iterable[str]) -> set[str]:
        """Those of ``task_ids`` whose task is active (queued, preparing, running)."""
        ...

    # --- wake-ups: hints that a claim may now succeed; waiters still poll -----------------------

    def notify_work(self) -> None:
        """Wake this process's waiters now (other processes: see ``wait_for_work``)."""
        ...

    def wait_for_work(self, timeout: float) -> None:
        """Return when work may have arrived, or after ``timeout`` seconds. Arrivals are
        signalled by ``notify_work`` in this process and, on PostgreSQL, by a NOTIFY that the
        database sends when any process queues a task or frees room in a package."""
        ...

    def ended_task(self, task_id: str) -> Task | None:
        """The task as an end written by this process lately left it (None: not known here;
        read it). Answers at once, without the database: for a waiter woken by that end."""
        ...

    def on_task_end(self, listener: Callable[[Collection[str] | None], None]) -> Callable[[], None]:
        """Call ``listener`` with the ids of tasks that reached a terminal state, once the change
        is committed (None: tasks it does not name, e.g. a package's queue cancelled): ends
        written by this process and, on PostgreSQL, by any process. Only a hint (a notification
        may be lost while the database connection is down): waiters still poll. The listener
        runs on the writing (or relaying) thread and must return at once. Returns the function
        that unsubscribes it."""
        ...

    # --- logs and events ------------------------------------------------------------------------

    def append_log(self, task_id: str, data: bytes, output_bytes: int | None = None) -> None: ...
    def read_log(self, task_id: str, offset: int = 0) -> bytes: ...
    def add_event(
        self, task_id: str, kind: EventKind, detail: str = "", container_id: str | None = None
    ) -> None:
        """Record an event; ``container_id`` is data, for code that looks for it later."""
        ...

    def list_events(self, task_id: str) -> list[TaskEvent]: ...

    # the HUD and /metrics (analytics_sql.py)
    def hud_secret(self) -> str: ...
    def end_hud_session(self, session_id: str, expires_at: float) -> None: ...
    def hud_session_ended(self, session_id: str, expires_at: float) -> bool: ...
    def update_code_config(self, project_id: str, code_id: str, config: str | None) -> int: ...
    def package_counts(
        self, project_id: str, code_ids: Sequence[str], since: float
    ) -> dict[str, dict[str, int]]: ...
    def task_series(self, project_id: str, since: float, bucket_s: int, by: str) -> list[SeriesPoint]: ...
    def usage_days(self, project_id: str, since: float) -> list[UsageDay]: ...
    def outcome_counts(self) -> list[StatusCount]: ...
    def active_counts(self) -> list[StatusCount]: ...
    def last_event_id(self) -> int: ...
    def task_facts_since(
        self, after_id: int, kinds: Sequence[str], limit: int = 50_000
    ) -> list[TaskFact]: ...
    def list_schedules_by_status(
        self, project_id: str, statuses: Sequence[str], page: int, per_page: int
    ) -> list[Schedule]: ...


def open_store(url: str) -> Store:
    """A store for a SQLAlchemy URL: ``sqlite:///path`` or ``postgresql://user@host/db``
    (also ``postgres://`` and ``postgresql+psycopg://``)."""
    if url.startswith("sqlite"):
        from .sqlite import SqliteStore

        return SqliteStore(url)
    if url.startswith(("postgresql", "postgres:")):
        from .postgres import PostgresStore

        return PostgresStore(url)
    from ..errors import ClientError

    raise ClientError(f"unsupported store URL {url!r}: use sqlite:///PATH or postgresql://USER@HOST/DB")
