"""One task's life in one fresh container: prepare, create, start, supervise, report, clean up."""

from __future__ import annotations

import logging
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .. import timeutil
from ..engine import DockerEngine, ExitInfo
from ..errors import ClientError, InfrastructureError, NotFound, TaskSetupError
from ..models import CodeSpec, Task, TaskOutcome
from ..settings import Settings
from ..states import TaskStatus
from ..store import Store
from .codecache import CodeCache
from .contract import TaskFiles, container_spec, ensure_hosts_file, parse_user, write_task_files
from .logpump import LogPump

log = logging.getLogger("dockworker.runner")

SUPERVISE_TICK_S = 0.05
# SIGKILL and SIGTERM that dockworker did not send (it reports its own kills itself).
EXTERNAL_KILL_CODES = frozenset({128 + 9, 128 + 15})


@dataclass(frozen=True, kw_only=True)
class RunnerContext:
    settings: Settings
    store: Store
    engine: DockerEngine
    code_cache: CodeCache
    runner_id: str
    installation_id: str


def classify_exit(exit_info: ExitInfo, spec_memory_mb: int) -> TaskOutcome:
    if exit_info.exit_code == 0:
        return TaskOutcome(status=TaskStatus.COMPLETE, msg="", exit_code=0)
    if exit_info.oom_killed:
        return TaskOutcome(
            status=TaskStatus.ERROR,
            msg=f"out of memory: the task exceeded its {spec_memory_mb} MB memory limit and was killed",
            exit_code=exit_info.exit_code,
        )
    if exit_info.exit_code in EXTERNAL_KILL_CODES:
        signal_number = exit_info.exit_code - 128
        return TaskOutcome(
            status=TaskStatus.KILLED,
            msg=f"killed by signal {signal_number} from outside the task (an operator or the host)",
            exit_code=exit_info.exit_code,
        )
    hints = {126: " (command not executable)", 127: " (command not found)"}
    detail = hints.get(exit_info.exit_code, "") + (f": {exit_info.error}" if exit_info.error else "")
    return TaskOutcome(
        status=TaskStatus.ERROR, msg=f"exit code {exit_info.exit_code}{detail}", exit_code=exit_info.exit_code
    )


class TaskExecution:
    """Supervises one task. :meth:`cancel` may be called from any thread."""

    def __init__(self, task: Task, context: RunnerContext) -> None:
        self.task = task
        self._ctx = context
        self._cancel = threading.Event()
        self._container_id: str | None = None
        self._interrupt_reason: str | None = None
        self._task_dir = context.settings.task_dirs / task.id

    def cancel(self) -> None:
        self._cancel.set()

    def interrupt(self, reason: str) -> None:
        """Stop the container and hand the task back to the queue (not the user's fault)."""
        self._interrupt_reason = reason
        self._cancel.set()

    # The whole lifecycle; never raises. The container is removed before the outcome is
    # reported, so no container outlives its task's terminal state.
    def run(self) -> None:
        ctx = self._ctx
        outcome: TaskOutcome | None = None
        infra_reason: str | None = None
        try:
            outcome = self._execute()
        except TaskSetupError as exc:
            outcome = TaskOutcome(status=TaskStatus.ERROR, msg=exc.message)
        except InfrastructureError as exc:
            infra_reason = exc.message
        except Exception as exc:  # a bug of ours: retry the task on the infrastructure budget
            log.exception("task.crashed", extra={"task_id": self.task.id})
            infra_reason = f"runner failure: {type(exc).__name__}: {exc}"
        finally:
            self._cleanup()
        try:
            if outcome is not None:
                ctx.store.finish(self.task.id, ctx.runner_id, outcome)
            elif infra_reason is not None:
                self._infra_failure(infra_reason)
        except Exception:  # the store is down: the lease expires and the task is reclaimed
            log.exception("task.report_failed", extra={"task_id": self.task.id})

    def _infra_failure(self, reason: str) -> None:
        ctx = self._ctx
        try:
            ctx.store.requeue_after_infra_failure(
                self.task.id,
                ctx.runner_id,
                reason,
                ctx.settings.infra_retry_budget,
                ctx.settings.infra_retry_base_delay_s,
            )
        except Exception:  # the store itself is down: the lease will expire and be reclaimed
            log.exception("task.report_failed", extra={"task_id": self.task.id})

    def _load_spec(self) -> tuple[CodeSpec, TaskFiles]:
        ctx = self._ctx
        try:
            revision = ctx.store.get_revision(self.task.revision_id)
        except NotFound as exc:
            raise TaskSetupError(exc.message) from exc
        try:
            code_dir = ctx.code_cache.directory_for(revision)
        except (ClientError, NotFound) as exc:
            raise TaskSetupError(f"cannot unpack the code package: {exc}") from exc
        uid, gid = parse_user(ctx.settings.task_user)
        write_task_files(self._task_dir, self.task.payload, revision.spec.config, uid, gid)
        files = TaskFiles(
            task_dir=self._task_dir, code_dir=code_dir, hosts_file=ensure_hosts_file(ctx.settings.data_dir)
        )
        return revision.spec, files

    def _execute(self) -> TaskOutcome | None:
        ctx = self._ctx
        spec, files = self._load_spec()
        container = container_spec(
            spec=spec,
            task_id=self.task.id,
            files=files,
            settings=ctx.settings,
            runner_id=ctx.runner_id,
            installation_id=ctx.installation_id,
        )
        if self._cancel.is_set():
            if self._interrupt_reason is not None:
                raise InfrastructureError(self._interrupt_reason)
            return TaskOutcome(status=TaskStatus.CANCELLED, msg="cancelled by user")
        if self.task.log_size:
            note = f"\n[dockworker: attempt {self.task.attempts}, after an infrastructure failure]\n"
            ctx.store.append_log(self.task.id, note.encode())
        self._container_id = ctx.engine.create(container)
        ctx.store.add_event(self.task.id, "container_created", self._container_id[:12])
        pump = LogPump(
            self.task.id, ctx.engine.attach(self._container_id), ctx.store, ctx.settings.limits.log_bytes
        )
        pump.start()
        ctx.engine.start(self._container_id)
        started = timeutil.now()
        deadline = time.monotonic() + self.task.timeout
        if not ctx.store.mark_running(self.task.id, ctx.runner_id, started):
            ctx.engine.kill(self._container_id)
            pump.join(5)
            pump.flush(force=True)
            return TaskOutcome(status=TaskStatus.CANCELLED, msg="cancelled by user")
        ending = self._supervise(pump, deadline)
        pump.flush(force=True)
        if pump.error is not None and ending is None:
            raise pump.error
        if ending is not None:
            return ending
        exit_info = ctx.engine.wait(self._container_id)
        outcome = classify_exit(exit_info, container.memory_bytes // (1024 * 1024))
        last_line = pump.last_line()
        if outcome.status is TaskStatus.ERROR and not exit_info.oom_killed and last_line:
            # As IronWorker did: the error's own last words, so `status` tells why.
            outcome = TaskOutcome(
                status=outcome.status, msg=f"{outcome.msg}: {last_line}", exit_code=outcome.exit_code
            )
        return outcome

    def _supervise(self, pump: LogPump, deadline: float) -> TaskOutcome | None:
        """Wait for the container's output to end, the deadline, or a cancel. Returns the
        outcome when we ended the task, None when the container exited by itself."""
        assert self._container_id is not None
        while not pump.done.wait(SUPERVISE_TICK_S):
            pump.flush()
            if self._cancel.is_set():
                self._ctx.engine.kill(self._container_id)
                pump.join(5)
                if self._interrupt_reason is not None:
                    pump.flush(force=True)
                    raise InfrastructureError(self._interrupt_reason)
                return TaskOutcome(status=TaskStatus.CANCELLED, msg="cancelled by user", exit_code=None)
            if time.monotonic() >= deadline:
                self._ctx.engine.kill(self._container_id)
                pump.join(5)
                return TaskOutcome(
                    status=TaskStatus.TIMEOUT, msg=f"timed out after {self.task.timeout} s", exit_code=None
                )
        return None

    def _cleanup(self) -> None:
        if self._container_id is not None:
            try:
                self._ctx.engine.remove(self._container_id)
            except InfrastructureError:
                log.warning("container.remove_failed", extra={"task_id": self.task.id})
        shutil.rmtree(self._task_dir, ignore_errors=True)


def remove_task_dir(task_dirs: Path, task_id: str) -> None:
    shutil.rmtree(task_dirs / task_id, ignore_errors=True)
