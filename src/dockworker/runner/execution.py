"""One task's life in one fresh container: prepare, create, start, supervise, report, clean up."""

from __future__ import annotations

import contextlib
import errno
import logging
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .. import payload_crypto, timeutil
from ..engine import Engine
from ..errors import (
    ClientError,
    EngineUnavailable,
    HostStorageFull,
    ImageMissing,
    InfrastructureError,
    NotFound,
    TaskSetupError,
)
from ..logsetup import Throttled
from ..models import CodeSpec, Task, TaskOutcome
from ..names import PROGRESS_NAME
from ..settings import Settings
from ..states import CANCELLED_MSG, EventKind, TaskStatus
from .codecache import CodeCache
from .container_run import RunHooks, RunResult, follow_container, run_container
from .contract import (
    TaskFiles,
    container_spec,
    ensure_hosts_file,
    ensure_one_stream_shell,
    parse_user,
    with_build_hint,
    write_task_files,
)
from .link import RunnerLink
from .progress import Progress, ProgressPipe, ProgressRelay, close_relay, make_fifo, open_relay

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import rsa

log = logging.getLogger("dockworker.runner")

REPORT_RETRY_FIRST_S = 0.1
REPORT_RETRY_MAX_S = 5.0
_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})


@dataclass(frozen=True, kw_only=True)
class StoreProgressSink:
    """A task's progress reports, to the store under this runner's lease."""

    store: RunnerLink
    task_id: str
    runner_id: str

    def report(self, progress: Progress) -> bool:
        return self.store.report_progress(self.task_id, self.runner_id, progress.percent, progress.msg)

    def refused(self, reason: str) -> None:
        self.store.add_event(self.task_id, EventKind.PROGRESS_REFUSED, f"progress line refused: {reason}")


@dataclass(frozen=True, kw_only=True)
class RunnerContext:
    settings: Settings
    store: RunnerLink  # the store in process, or the API for a remote runner
    engine: Engine
    code_cache: CodeCache
    runner_id: str
    installation_id: str
    # Cleared when the engine stops answering: the runner claims nothing until it answers again.
    engine_ok: threading.Event = field(default_factory=threading.Event)
    # Cleared when this host cannot unpack code or write task files (disk full): the same.
    host_ok: threading.Event = field(default_factory=threading.Event)
    # Set when the runner stops for good: reports still failing are given up.
    abandon: threading.Event = field(default_factory=threading.Event)
    # Held by a claim and by clearing engine_ok/host_ok: a claim under way when a task is
    # handed back because of them cannot take that task again.
    claim_gate: threading.Lock = field(default_factory=threading.Lock)
    # The cluster's private key, for payloads encrypted end to end (payload_crypto.py).
    payload_key: rsa.RSAPrivateKey | None = None


class TaskExecution:
    """Supervises one task. :meth:`cancel` may be called from any thread."""

    def __init__(self, task: Task, context: RunnerContext, *, adopt: str | None = None) -> None:
        """``adopt``: the id of this task's container, started by an earlier process of this
        runner, to follow instead of starting a new one."""
        self.task = task
        self._adopt = adopt
        self._ctx = context
        self._cancel = threading.Event()
        self._interrupt_reason: str | None = None
        self.engine_unreachable = False
        self.host_storage_full = False
        self._task_dir = context.settings.task_dirs / task.id
        self._progress: ProgressRelay | None = None
        self._progress_done = False
        self._report_log = Throttled(log, interval_s=30.0)
        self._finished = False  # the outcome is reported
        # Whether the task's package limits its concurrency (unknown until its spec is read).
        self.package_limited = True

    @property
    def _ids(self) -> dict[str, str]:
        return {"task_id": self.task.id}

    def cancel(self) -> None:
        self._cancel.set()

    def interrupt(self, reason: str) -> None:
        """Stop the container and hand the task back to the queue (not the user's fault)."""
        self._interrupt_reason = reason
        self._cancel.set()

    # The whole lifecycle; never raises. A container's outcome is reported as soon as it has
    # exited and its output is stored (run_container's on_outcome), and the container is removed
    # right after, before the slot takes another task: a runner that dies in between leaves an
    # exited container of a finished task, which the reaper removes. A task handed back (an
    # infrastructure failure) is handed back once its container is gone.
    def run(self) -> None:
        outcome: TaskOutcome | None = None
        infra_reason: str | None = None
        try:
            outcome = self._execute()
        except TaskSetupError as exc:
            outcome = TaskOutcome(status=TaskStatus.ERROR, msg=exc.message)
        except EngineUnavailable as exc:
            self.engine_unreachable = True
            infra_reason = exc.message
        except HostStorageFull as exc:
            self.host_storage_full = True
            infra_reason = exc.message
        except InfrastructureError as exc:
            infra_reason = exc.message
        except Exception as exc:  # a bug of ours: retry the task on the infrastructure budget
            log.exception("task.crashed", extra=self._ids)
            infra_reason = f"runner failure: {type(exc).__name__}: {exc}"
        finally:
            self._cleanup()
        if self._finished:
            return
        if outcome is not None:
            self._finish(outcome)
        elif infra_reason is not None:
            self._hand_back(infra_reason)

    def _finish(self, outcome: TaskOutcome) -> None:
        self._finished = True
        self._report("finish", lambda: self._ctx.store.finish(self.task.id, self._ctx.runner_id, outcome))

    def _on_outcome(self, result: RunResult) -> None:
        """The container has ended: report now, before its removal (unless the task is to be
        handed back, which waits for the removal); its last progress first."""
        if not (result.stopped and self._interrupt_reason is not None):
            self._last_progress()
            self._finish(result.outcome)

    def _hand_back(self, reason: str) -> None:
        ctx = self._ctx
        held: threading.Event | None = None
        why = ""
        if self.engine_unreachable:
            held, why = ctx.engine_ok, f"the Docker engine became unreachable ({reason})"
        elif self.host_storage_full:
            held, why = ctx.host_ok, f"the runner's host has no space left ({reason})"
        if held is not None:
            with ctx.claim_gate:
                held.clear()  # before the release, so this runner does not claim it again
            # Not the task's fault, nor a reason to spend its budget: another runner (or this
            # one, once the engine answers or space is back) takes it from its old place.
            log.warning("task.released", extra={**self._ids, "reason": why})
            self._report("release", lambda: ctx.store.release(self.task.id, ctx.runner_id, why))
            return
        log.warning("task.infra_failure", extra={**self._ids, "reason": reason})
        self._report(
            "requeue",
            lambda: ctx.store.requeue_after_infra_failure(
                self.task.id,
                ctx.runner_id,
                reason,
                ctx.settings.infra_retry_budget,
                ctx.settings.infra_retry_base_delay_s,
                ctx.settings.infra_retry_max_delay_s,
            ),
        )

    def _report(self, what: str, write: Callable[[], object]) -> None:
        """Write the task's final report, retrying while the store fails: every report is
        conditional on this runner's lease, so repeating one is harmless, and the runner keeps
        renewing the lease meanwhile. Giving up would leave the task to expire and run again."""
        delay = REPORT_RETRY_FIRST_S
        attempt = 1
        while True:
            try:
                write()
            except Exception as exc:
                self._report_log(
                    logging.WARNING,
                    "task.report_failed",
                    {
                        **self._ids,
                        "report": what,
                        "attempt": attempt,
                        "error": f"{type(exc).__name__}: {exc}",
                    },
                    exc_info=True,
                )
            else:
                if attempt > 1:
                    log.info("task.reported", extra={**self._ids, "report": what, "attempts": attempt})
                return
            if self._ctx.abandon.wait(delay):
                log.error("task.report_abandoned", extra={**self._ids, "report": what})
                return
            delay = min(delay * 2, REPORT_RETRY_MAX_S)
            attempt += 1

    def _load_spec(self) -> tuple[CodeSpec, TaskFiles]:
        ctx = self._ctx
        try:
            revision = ctx.code_cache.revision(self.task.revision_id)
        except NotFound as exc:
            raise TaskSetupError(exc.message) from exc
        try:
            code_dir = ctx.code_cache.directory_for(revision)
            uid, gid = parse_user(ctx.settings.task_user)
            write_task_files(self._task_dir, self._payload(), revision.spec.config, uid, gid)
            progress_fifo = make_fifo(self._task_dir, PROGRESS_NAME, gid)
            # Open before the container starts: a worker's open for writing waits for a reader.
            self._progress = ProgressRelay(
                ProgressPipe.open(progress_fifo), self._progress_sink(), name=self.task.id
            )
            hosts_file = ensure_hosts_file(ctx.settings.data_dir)
        except (ClientError, NotFound) as exc:
            raise TaskSetupError(f"cannot unpack the code package: {exc}") from exc
        except OSError as exc:
            if exc.errno in _NO_SPACE:
                raise HostStorageFull(f"cannot prepare the task's files: {exc.strerror}") from exc
            raise
        self.package_limited = bool(revision.spec.max_concurrency)
        files = TaskFiles(
            task_dir=self._task_dir,
            code_dir=code_dir,
            hosts_file=hosts_file,
            progress_fifo=progress_fifo,
            one_stream_shell=ensure_one_stream_shell(ctx.settings.data_dir),
        )
        return revision.spec, files

    def _payload(self) -> str:
        """The payload as the worker reads it: opened here when it was encrypted for the
        cluster (never written anywhere but the task's own directory)."""
        payload = self.task.payload
        if not payload_crypto.is_envelope(payload):
            return payload
        key = self._ctx.payload_key
        if key is None:
            raise TaskSetupError(
                "the payload is encrypted, and this runner has no decryption key"
                " (start it with --decryption-key-file, or DECRYPTION_KEY)"
            )
        try:
            return payload_crypto.decrypt(payload, key)
        except payload_crypto.PayloadNotDecryptable as exc:
            raise TaskSetupError(exc.message) from exc

    def _execute(self) -> TaskOutcome:
        if self._adopt is not None:
            return self._follow(self._adopt)
        ctx = self._ctx
        task_id = self.task.id
        spec, files = self._load_spec()
        container = container_spec(
            spec=spec,
            task_id=task_id,
            files=files,
            settings=ctx.settings,
            runner_id=ctx.runner_id,
            installation_id=ctx.installation_id,
        )
        if self._cancel.is_set():
            if self._interrupt_reason is not None:
                raise InfrastructureError(self._interrupt_reason)
            return TaskOutcome(status=TaskStatus.CANCELLED, msg=CANCELLED_MSG)
        already_kept = self.task.log_size
        if already_kept:
            note = f"\n[dockworker: attempt {self.task.attempts + 1}, after an infrastructure failure]\n"
            ctx.store.append_log(task_id, note.encode())
            already_kept += len(note.encode())

        # The container's creation is recorded with its start (one write), or alone if it never starts.
        created: list[tuple[str, float]] = []

        def on_created(container_id: str) -> None:
            created.append((container_id, timeutil.now()))

        def on_started(started_at: float) -> bool:
            container_id, created_at = created.pop()
            if ctx.store.mark_running(task_id, ctx.runner_id, started_at, container_id, created_at):
                return True
            # the lease was lost meanwhile: the container did start, so its attempt counts
            ctx.store.record_unreported_start(task_id, container_id, ctx.runner_id)
            return False

        try:
            result = run_container(
                ctx.engine,
                container,
                sink=lambda data, consumed: ctx.store.append_log(task_id, data, consumed),
                timeout_s=self.task.timeout,
                stop=self._cancel,
                hooks=RunHooks(
                    on_created=on_created,
                    on_started=on_started,
                    on_tick=self._tick_progress,
                    on_outcome=self._on_outcome,
                ),
                name=task_id,
                already_kept=already_kept,
            )
        except ImageMissing as exc:
            raise TaskSetupError(with_build_hint(spec, exc.message)) from exc
        finally:
            for container_id, _ in created:  # created, never started
                with contextlib.suppress(Exception):  # the event only; the failure says the rest
                    ctx.store.add_event(task_id, EventKind.CONTAINER_CREATED, container_id[:12], container_id)
        return self._ended(result)

    def _ended(self, result: RunResult) -> TaskOutcome:
        if result.stopped and self._interrupt_reason is not None:
            raise InfrastructureError(self._interrupt_reason)
        self._last_progress()
        return result.outcome

    def _last_progress(self) -> None:
        """What the worker wrote last, while the lease is still held (once)."""
        relay = self._progress
        if relay is not None and not self._progress_done:
            self._progress_done = True
            relay.finish()

    def _progress_sink(self) -> StoreProgressSink:
        return StoreProgressSink(store=self._ctx.store, task_id=self.task.id, runner_id=self._ctx.runner_id)

    def _tick_progress(self) -> None:
        if self._progress is not None:
            self._progress.tick()

    def _follow(self, container_id: str) -> TaskOutcome:
        ctx = self._ctx
        task = self.task
        ctx.store.add_event(
            task.id,
            EventKind.READOPTED,
            f"runner {ctx.runner_id} follows container {container_id[:12]}",
            container_id,
        )
        # The FIFO outlived the earlier runner process: its worker's writes resume here.
        self._progress = open_relay(self._task_dir / PROGRESS_NAME, self._progress_sink(), name=task.id)
        result = follow_container(
            ctx.engine,
            container_id,
            sink=lambda data, consumed: ctx.store.append_log(task.id, data, consumed),
            log_cap=ctx.settings.limits.log_bytes,
            skip=task.output_bytes,
            already_kept=task.log_size,
            seconds_left=(task.start_time or time.time()) + task.timeout - time.time(),
            timeout_s=task.timeout,
            stop=self._cancel,
            name=task.id,
            on_tick=self._tick_progress,
        )
        return self._ended(result)

    def _cleanup(self) -> None:
        close_relay(self._progress)
        shutil.rmtree(self._task_dir, ignore_errors=True)
