"""What a runner asks of the service, and nothing more: the runner-facing operations.

Two transports implement it, and one runner lifecycle drives both:

* in process (``dockworker up``, ``dockworker runner --store``): the :class:`~dockworker.store.Store`
  itself, which has every method below with the same meaning;
* remote (``dockworker runner --api URL --cluster-id ID --cluster-token TOKEN``): the API's
  runner routes over HTTP (``runner/remote.py``), which reach only what a cluster token may: the
  tasks of its cluster, and among them those leased to the calling runner.

Every report is conditional on the task's lease, as ``store/base.py`` documents method by method:
when the lease is lost, nothing is written and the method says so (``False``, ``None``, or the
ids left out)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

from ..models import CodeRevision, Task, TaskOutcome
from ..states import EventKind
from ..store.identity import RunnerIdentity


class RunnerLink(Protocol):
    # --- who this runner is ---------------------------------------------------------------------

    def installation_id(self) -> str:
        """The installation whose containers this runner makes (their label)."""
        ...

    def hold_runner_identity(self, runner_id: str) -> RunnerIdentity:
        """Take the runner id for this process; AlreadyRunning when a live process has it."""
        ...

    def register_runner(
        self, runner_id: str, host: str, clusters: Sequence[str], slots: int, version: str
    ) -> None: ...
    def runner_heartbeat(self, runner_id: str, running: int) -> None: ...
    def unregister_runner(self, runner_id: str) -> None: ...

    # --- work -----------------------------------------------------------------------------------

    def claim(
        self, runner_id: str, clusters: Sequence[str], lease_ttl: float, starvation_s: float = 300.0
    ) -> Task | None: ...
    def wait_for_work(self, timeout: float) -> None: ...
    def notify_work(self) -> None: ...
    def get_revision(self, revision_id: str) -> CodeRevision: ...
    def get_revision_archive(self, revision_id: str) -> bytes | None: ...
    def load_task(self, task_id: str) -> Task: ...

    # --- reports (conditional on the lease) -----------------------------------------------------

    def mark_running(
        self,
        task_id: str,
        runner_id: str,
        start_time: float,
        container_id: str = "",
        created_at: float | None = None,
    ) -> bool: ...
    def record_unreported_start(self, task_id: str, container_id: str, runner_id: str) -> bool: ...
    def finish(self, task_id: str, runner_id: str, outcome: TaskOutcome) -> bool: ...
    def requeue_after_infra_failure(
        self,
        task_id: str,
        runner_id: str,
        reason: str,
        budget: int,
        delay: float,
        max_delay: float = 60.0,
    ) -> Task | None: ...
    def release(self, task_id: str, runner_id: str, reason: str) -> bool: ...
    def report_progress(self, task_id: str, runner_id: str, percent: int | None, msg: str | None) -> bool:
        """The worker's progress (its channel, runner/progress.py). False when the lease is lost."""
        ...

    def append_log(self, task_id: str, data: bytes, output_bytes: int | None = None) -> None: ...
    def add_event(
        self, task_id: str, kind: EventKind, detail: str = "", container_id: str | None = None
    ) -> None: ...

    # --- leases, cancels, orphans ---------------------------------------------------------------

    def heartbeat(self, runner_id: str, task_ids: Iterable[str], lease_ttl: float) -> set[str]: ...
    def cancel_requested(self, runner_id: str) -> set[str]: ...
    def leased_task_ids(self, runner_id: str) -> set[str]: ...
    def active_among(self, task_ids: Iterable[str]) -> set[str]:
        """Those of ``task_ids`` whose task is still active (queued, preparing, running)."""
        ...
