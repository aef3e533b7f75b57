"""The runner: claims tasks into N slots, keeps their leases alive, relays cancels, and
removes containers that no task owns any more."""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .. import __version__
from ..engine import Engine
from ..errors import InfrastructureError
from ..logsetup import Throttled
from ..models import Task
from ..names import INSTALLATION_LABEL, RUNNER_LABEL, TASK_LABEL
from ..settings import Settings
from ..states import TaskStatus
from ..store.identity import RunnerIdentity
from .codecache import CodeCache
from .execution import RunnerContext, TaskExecution
from .link import RunnerLink

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import rsa

log = logging.getLogger("dockworker.runner")

# How often running tasks are checked for cancel requests (a cancel takes effect within a second).
CANCEL_POLL_S = 0.5
ENGINE_PING_INTERVAL_S = 1.0
HOST_PROBE_INTERVAL_S = 1.0
HOST_PROBE_BYTES = 64 * 1024
IDENTITY_WAIT_S = 0.5
REAP_INTERVAL_S = 30.0
# How long a stopping runner waits for its task threads after handing their tasks back.
THREAD_JOIN_S = 15.0


def default_runner_id(data_dir: Path) -> str:
    """Stable across restarts of the same installation (so a restarted runner recognises its
    own leases), distinct for two installations on one host."""
    digest = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:8]
    return f"{socket.gethostname()}-{digest}"


def resolve_runner_id(settings: Settings) -> str:
    return settings.runner_id or default_runner_id(settings.data_dir)


class Runner:
    def __init__(
        self,
        settings: Settings,
        store: RunnerLink,
        engine: Engine,
        runner_id: str | None = None,
        *,
        identity: RunnerIdentity | None = None,
        payload_key: rsa.RSAPrivateKey | None = None,
    ) -> None:
        """``identity``: the runner id already held by the caller (see
        ``Store.hold_runner_identity``); otherwise :meth:`run` takes it first."""
        self.settings = settings
        self.store = store
        self.engine = engine
        self.runner_id = identity.runner_id if identity else runner_id or resolve_runner_id(settings)
        self._identity = identity
        self._engine_ok = threading.Event()
        self._engine_ok.set()
        self._host_ok = threading.Event()
        self._host_ok.set()
        self._context = RunnerContext(
            settings=settings,
            store=store,
            engine=engine,
            code_cache=CodeCache(settings.code_cache_dir, store),
            runner_id=self.runner_id,
            installation_id=store.installation_id(),
            engine_ok=self._engine_ok,
            host_ok=self._host_ok,
            payload_key=payload_key,
        )
        self._executions: dict[str, TaskExecution] = {}
        self._threads: dict[str, threading.Thread] = {}
        self._lock = threading.Lock()
        self._slot_freed = threading.Event()
        self._stopped = threading.Event()
        self._force = threading.Event()
        self._throttled = Throttled(log)
        self._ids = {"runner_id": self.runner_id}

    # --- public ---------------------------------------------------------------------------------

    def wake(self) -> None:
        """New work may be available (called in-process by the API after an enqueue, and by the
        scheduler after a fire). Wakes every runner of this process waiting on the store."""
        self.store.notify_work()

    def force_stop(self) -> None:
        """Skip the grace period: running tasks go back to the queue now."""
        self._force.set()

    def abandon_reports(self) -> None:
        """Give up the reports that keep failing now rather than after the shutdown's wait (the
        link will never accept one again: its token was refused); the tasks' leases expire and
        they run again."""
        self._context.abandon.set()

    def running_task_ids(self) -> set[str]:
        with self._lock:
            return set(self._executions)

    def hold_identity(self) -> RunnerIdentity:
        """Take this runner's id for this process (AlreadyRunning when another live process
        has it). Nothing is touched before."""
        if self._identity is None:
            self._identity = self.store.hold_runner_identity(self.runner_id)
        return self._identity

    def run(self, stop: threading.Event) -> None:
        """Run until ``stop`` is set; then stop claiming, let running tasks finish within the
        grace period, and hand the rest back to the queue."""
        identity = self.hold_identity()
        try:
            self._run(stop)
        finally:
            identity.release()

    def _run(self, stop: threading.Event) -> None:
        self.settings.task_dirs.mkdir(parents=True, exist_ok=True)
        self.store.register_runner(
            self.runner_id, socket.gethostname(), self.settings.clusters, self.settings.slots, __version__
        )
        self._reconcile()
        self.reap_orphans()
        watcher = threading.Thread(target=self._watch, name="runner-watch", daemon=True)
        watcher.start()
        try:
            self._claim_loop(stop)
        finally:
            deadline = self._shutdown()
            self._stopped.set()
            watcher.join(max(0.0, deadline - time.monotonic()))
            try:
                self.store.unregister_runner(self.runner_id)
            except Exception as exc:
                log.warning("runner.unregister_failed", extra={**self._ids, "error": str(exc)})
            log.info("runner.stopped", extra=self._ids)

    # --- claiming -------------------------------------------------------------------------------

    def _free_slots(self) -> int:
        with self._lock:
            return self.settings.slots - len(self._executions)

    def _claim_loop(self, stop: threading.Event) -> None:
        """Claim while there are free slots and claimable tasks. When every slot is busy, wait
        for one to free up; when nothing is claimable, wait on the store for new work (an
        in-process wake, or another process's enqueue on PostgreSQL), polling anyway every
        ``poll_interval_s``."""
        while not stop.is_set():
            if self._free_slots() <= 0:
                self._slot_freed.wait(self.settings.poll_interval_s)
                self._slot_freed.clear()
                continue
            if not (self._identity_held(stop) and self._engine_answers(stop) and self._host_writable(stop)):
                continue
            try:
                with self._context.claim_gate:
                    if not (self._engine_ok.is_set() and self._host_ok.is_set()):
                        continue  # a task was just handed back because of them
                    task = self.store.claim(
                        self.runner_id,
                        self.settings.clusters,
                        self.settings.lease_ttl_s,
                        starvation_s=self.settings.starvation_bound_s,
                    )
            except Exception as exc:
                self._throttled(
                    logging.ERROR,
                    "runner.claim_failed",
                    {**self._ids, "error": str(exc)},
                    exc_info=not isinstance(exc, InfrastructureError),  # a bug's trace, not an outage's
                )
                stop.wait(self.settings.poll_interval_s)
                continue
            self._throttled.reset("runner.claim_failed")
            if task is None:
                self.store.wait_for_work(self.settings.poll_interval_s)
                continue
            self._start(TaskExecution(task, self._context))

    def _identity_held(self, stop: threading.Event) -> bool:
        """Claim nothing while the store does not confirm that this process holds the runner id
        (PostgreSQL: its lock's connection dropped): another process may be taking it over."""
        if self._identity is None or self._identity.held():
            return True
        self._throttled(logging.WARNING, "runner.identity_not_held: not claiming", self._ids)
        stop.wait(IDENTITY_WAIT_S)
        return False

    def _engine_answers(self, stop: threading.Event) -> bool:
        """Claim nothing while the engine is known to be unreachable (a task claimed then would
        only be handed back): ping it once a second until it answers again."""
        if self._engine_ok.is_set():
            return True
        try:
            self.engine.ping()
        except InfrastructureError:
            stop.wait(ENGINE_PING_INTERVAL_S)
            return False
        log.info("runner.engine_back: claiming again", extra=self._ids)
        self._engine_ok.set()
        # Containers whose removal failed while it was away go now, not at the next reap.
        try:
            self.reap_orphans()
        except Exception as exc:
            log.warning("runner.reap_failed", extra={**self._ids, "error": str(exc)})
        return True

    def _host_writable(self, stop: threading.Event) -> bool:
        """Claim nothing while this host's disk is full (a task claimed then would only be
        handed back): try to write where code is unpacked and task files go, once a second."""
        if self._host_ok.is_set():
            return True
        try:
            for directory in (self.settings.code_cache_dir, self.settings.task_dirs):
                _probe_write(directory)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            self._throttled(
                logging.WARNING, "runner.host_full: not claiming", {**self._ids, "error": exc.strerror}
            )
            stop.wait(HOST_PROBE_INTERVAL_S)
            return False
        log.info("runner.host_space_back: claiming again", extra=self._ids)
        self._throttled.reset("runner.host_full: not claiming")
        self._host_ok.set()
        return True

    def _start(self, execution: TaskExecution) -> None:
        task_id = execution.task.id
        thread = threading.Thread(
            target=self._run_execution, args=(execution,), name=f"task-{task_id}", daemon=True
        )
        with self._lock:
            self._executions[task_id] = execution
            self._threads[task_id] = thread
        thread.start()

    def _run_execution(self, execution: TaskExecution) -> None:
        try:
            execution.run()
        finally:
            if execution.engine_unreachable:
                log.warning(
                    "runner.engine_unreachable: claiming stops until it answers",
                    extra={**self._ids, "task_id": execution.task.id},
                )
            if execution.host_storage_full:
                log.warning(
                    "runner.host_full: claiming stops until space is back",
                    extra={**self._ids, "task_id": execution.task.id},
                )
            with self._lock:
                self._executions.pop(execution.task.id, None)
                self._threads.pop(execution.task.id, None)
            self._slot_freed.set()
            if execution.package_limited:
                # Its package may have room again under max_concurrency: claim at once. (A
                # package limited since this task's revision waits for the next poll.)
                self.store.notify_work()

    # --- leases, cancels, orphans ---------------------------------------------------------------

    def _watch(self) -> None:
        last_heartbeat = 0.0
        last_reap = time.monotonic()
        while not self._stopped.wait(CANCEL_POLL_S):
            try:
                self._relay_cancels()
                now = time.monotonic()
                if now - last_heartbeat >= self.settings.heartbeat_interval_s:
                    self._heartbeat()
                    last_heartbeat = now
                if now - last_reap >= REAP_INTERVAL_S:
                    self.reap_orphans()
                    last_reap = now
            except Exception as exc:
                self._throttled(
                    logging.ERROR,
                    "runner.watch_failed",
                    {**self._ids, "error": str(exc)},
                    exc_info=not isinstance(exc, InfrastructureError),  # a bug's trace, not an outage's
                )
            else:
                self._throttled.reset("runner.watch_failed")

    def _relay_cancels(self) -> None:
        with self._lock:
            if not self._executions:
                return
        for task_id in self.store.cancel_requested(self.runner_id):
            with self._lock:
                execution = self._executions.get(task_id)
            if execution is not None:
                execution.cancel()

    def _heartbeat(self) -> None:
        running = self.running_task_ids()
        self.store.runner_heartbeat(self.runner_id, len(running))
        still_ours = self.store.heartbeat(self.runner_id, running, self.settings.lease_ttl_s)
        for task_id in running - still_ours:
            # Our lease was taken away (expired and re-queued): stop the container now.
            with self._lock:
                execution = self._executions.get(task_id)
            if execution is not None:
                log.warning("runner.lease_lost", extra={**self._ids, "task_id": task_id})
                execution.cancel()

    def _reconcile(self) -> None:
        """After a restart: keep following the containers of tasks still leased to this runner
        (re-adoption); hand back the leased tasks whose container is gone or never started."""
        leased = self.store.leased_task_ids(self.runner_id)
        if not leased:
            return
        adopted: set[str] = set()
        try:
            containers = self.engine.list_labelled(f"{INSTALLATION_LABEL}={self._context.installation_id}")
        except InfrastructureError as exc:
            log.warning("runner.reconcile_list_failed", extra={**self._ids, "error": exc.message})
            containers = []
        for container in containers:
            task_id = container.labels.get(TASK_LABEL, "")
            if container.labels.get(RUNNER_LABEL) != self.runner_id or task_id not in leased:
                continue
            task = self.store.load_task(task_id)
            if task.status is TaskStatus.PREPARING:
                task = self._record_unreported_start(task, container.id)
            if task.status is TaskStatus.RUNNING and self._free_slots() > 0:
                log.info(
                    "runner.readopt",
                    extra={**self._ids, "task_id": task_id, "container_id": container.id[:12]},
                )
                self._start(TaskExecution(task, self._context, adopt=container.id))
                adopted.add(task_id)
        for task_id in leased - adopted:
            log.warning("runner.requeue_unadopted", extra={**self._ids, "task_id": task_id})
            self.store.requeue_after_infra_failure(
                task_id,
                self.runner_id,
                "the runner restarted before the task's container was running",
                self.settings.infra_retry_budget,
                self.settings.infra_retry_base_delay_s,
                self.settings.infra_retry_max_delay_s,
            )

    def _record_unreported_start(self, task: Task, container_id: str) -> Task:
        """The earlier process started this container but died before it could say so: record
        the start now (its attempt happened), so the task is followed like any running one."""
        try:
            started = self.engine.started_at(container_id)
        except InfrastructureError:
            return task
        if started is not None and self.store.mark_running(task.id, self.runner_id, started, container_id):
            return self.store.load_task(task.id)
        return task

    def reap_orphans(self) -> int:
        """Remove this installation's containers whose task the store no longer considers
        active, and containers of this runner that no current execution owns."""
        try:
            containers = self.engine.list_labelled(f"{INSTALLATION_LABEL}={self._context.installation_id}")
        except InfrastructureError as exc:
            self._throttled(logging.WARNING, "runner.reap_skipped", {**self._ids, "error": exc.message})
            return 0
        mine = self.running_task_ids()
        labelled = {container.labels.get(TASK_LABEL, "") for container in containers}
        active = self.store.active_among(labelled - {""}) if containers else set()
        removed = 0
        for container in containers:
            task_id = container.labels.get(TASK_LABEL, "")
            owner = container.labels.get(RUNNER_LABEL)
            # Our own tasks' containers are our executions' to remove (just after their report).
            orphan = task_id not in mine if owner == self.runner_id else task_id not in active
            if not orphan:
                continue
            try:
                if self.engine.started_at(container.id) is not None:
                    self.store.record_unreported_start(task_id, container.id, owner or "unknown")
                self.engine.remove(container.id)
                removed += 1
                log.info(
                    "runner.reaped",
                    extra={**self._ids, "task_id": task_id, "container_id": container.id[:12]},
                )
            except InfrastructureError as exc:
                log.warning(
                    "runner.reap_failed",
                    extra={
                        **self._ids,
                        "task_id": task_id,
                        "container_id": container.id[:12],
                        "error": exc.message,
                    },
                )
        self._release_accounting()
        return removed

    def _release_accounting(self) -> None:
        """Remove the usage accounting the engine kept for tasks no longer active (a runner
        killed between making it and removing it with the container leaves it behind)."""
        installation = self._context.installation_id
        try:
            accounted = self.engine.accounted_tasks(installation)
            if not accounted:
                return
            # Read after the listing: a task claimed meanwhile is active, its accounting stays.
            active = self.store.active_among(accounted)
            for task_id in sorted(accounted - active):
                if self.engine.release_accounting(installation, task_id):
                    log.info("runner.accounting_released", extra={**self._ids, "task_id": task_id})
        except InfrastructureError as exc:
            self._throttled(
                logging.WARNING, "runner.accounting_sweep_failed", {**self._ids, "error": exc.message}
            )

    # --- shutdown -------------------------------------------------------------------------------

    def _shutdown(self) -> float:
        """Let running tasks finish within the grace period, then hand the rest back; returns
        the deadline by which every thread of this runner is to have ended."""
        grace_end = time.monotonic() + self.settings.shutdown_grace_s
        while self.running_task_ids() and time.monotonic() < grace_end and not self._force.is_set():
            self._force.wait(0.1)
        with self._lock:
            remaining = list(self._executions.values())
            threads = list(self._threads.values())
        for execution in remaining:
            execution.interrupt("the runner shut down before the task finished")
        deadline = time.monotonic() + THREAD_JOIN_S
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if any(thread.is_alive() for thread in threads):
            # Their reports keep failing: give up (the leases expire and the tasks run again).
            self._context.abandon.set()
            for thread in threads:
                thread.join(max(0.0, deadline + 1.0 - time.monotonic()))
        return deadline


def _probe_write(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    probe = directory / f".space-probe-{os.getpid()}-{threading.get_ident()}"
    try:
        with probe.open("wb") as handle:
            handle.write(b"\0" * HOST_PROBE_BYTES)
            handle.flush()
            os.fsync(handle.fileno())
    finally:
        probe.unlink(missing_ok=True)
