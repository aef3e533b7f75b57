"""One container spec run to its end, without a store: create, attach before start, start,
supervise (deadline from the container's start, stop on request), read the exit, remove.
The runner (``execution.py``) and ``dockworker run-local`` both run workers through here, so
the two cannot drift apart."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from .. import timeutil
from ..engine import UNKNOWN_USAGE, ContainerSpec, Engine, ExitInfo, ResourceUsage
from ..errors import InfrastructureError
from ..models import TaskOutcome
from ..settings import MB
from ..states import CANCELLED_MSG, TaskStatus
from .logpump import LogPump, LogSink

log = logging.getLogger("dockworker.runner")

SUPERVISE_TICK_S = 0.05
PUMP_DRAIN_S = 5.0
# SIGKILL and SIGTERM that dockworker did not send (it reports its own kills itself).
EXTERNAL_KILL_CODES = frozenset({128 + 9, 128 + 15})


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


def _ignore_created(container_id: str) -> None:
    """The default on_created hook."""


def _always_proceed(started_at: float) -> bool:
    return True


def _no_tick() -> None:
    """The default on_tick hook."""


@dataclass(frozen=True, kw_only=True)
class RunResult:
    outcome: TaskOutcome
    # True when the container was killed because ``stop`` was set or on_started refused.
    stopped: bool = False


def _ignore_outcome(result: RunResult) -> None:
    """The default on_outcome hook."""


@dataclass(frozen=True, kw_only=True)
class RunHooks:
    """What the caller does at points of the run. on_started gets the start time (epoch
    seconds) and returns False to have the container killed at once (ending as cancelled).
    on_tick is called at every tick of the supervision while the container runs. on_outcome
    gets the result once the container has ended, its output is all in the sink and what it
    used is read, before the container is removed: the outcome can be reported without waiting
    for that."""

    on_created: Callable[[str], None] = _ignore_created
    on_started: Callable[[float], bool] = _always_proceed
    on_tick: Callable[[], None] = _no_tick
    on_outcome: Callable[[RunResult], None] = _ignore_outcome


def run_container(
    engine: Engine,
    spec: ContainerSpec,
    *,
    sink: LogSink,
    timeout_s: int,
    stop: threading.Event,
    hooks: RunHooks | None = None,
    name: str = "task",
    already_kept: int = 0,
) -> RunResult:
    """Run spec to its end and return how it ended. The container is removed before this
    returns or raises, whatever happened. Engine failures raise InfrastructureError or
    TaskSetupError (image missing...). ``already_kept``: bytes of this task's log written by
    earlier attempts; the log cap (``spec.log_max_bytes``) counts them too."""
    hooks = hooks or RunHooks()
    container_id = engine.create(spec)
    try:
        hooks.on_created(container_id)
        pump = LogPump(
            engine.attach(container_id), sink, spec.log_max_bytes, name=name, already_kept=already_kept
        )
        pump.start()
        engine.start(container_id)
        deadline = time.monotonic() + timeout_s
        if not hooks.on_started(timeutil.now()):
            _kill_and_drain(engine, container_id, pump)
            result = _measured(engine, container_id, RunResult(outcome=_cancelled(), stopped=True), name)
        else:
            result = _supervise(
                engine, container_id, spec.memory_bytes // MB, pump, deadline, timeout_s, stop, hooks.on_tick
            )
            result = _measured(engine, container_id, result, name)
        hooks.on_outcome(result)
        return result
    finally:
        _remove(engine, container_id, name)


def follow_container(
    engine: Engine,
    container_id: str,
    *,
    sink: LogSink,
    log_cap: int,
    skip: int,
    already_kept: int,
    seconds_left: float,
    timeout_s: int,
    stop: threading.Event,
    name: str,
    on_tick: Callable[[], None] = _no_tick,
) -> RunResult:
    """Re-adopt a container started by an earlier process of this runner: resume its log after
    the ``skip`` bytes already consumed, then supervise it to its end as run_container does
    (deadline, stop, exit, removal)."""
    try:
        memory_mb = engine.memory_limit(container_id) // MB
        pump = LogPump(
            engine.follow_logs(container_id), sink, log_cap, name=name, skip=skip, already_kept=already_kept
        )
        pump.start()
        deadline = time.monotonic() + seconds_left
        result = _supervise(engine, container_id, memory_mb, pump, deadline, timeout_s, stop, on_tick)
        return _measured(engine, container_id, result, name)
    finally:
        _remove(engine, container_id, name)


def _supervise(
    engine: Engine,
    container_id: str,
    memory_mb: int,
    pump: LogPump,
    deadline: float,
    timeout_s: int,
    stop: threading.Event,
    on_tick: Callable[[], None],
) -> RunResult:
    """Wait for the container's output to end, the deadline, or stop."""
    while not pump.done.wait(SUPERVISE_TICK_S):
        pump.flush()
        on_tick()
        if stop.is_set():
            _kill_and_drain(engine, container_id, pump)
            return RunResult(outcome=_cancelled(), stopped=True)
        if time.monotonic() >= deadline:
            _kill_and_drain(engine, container_id, pump)
            outcome = TaskOutcome(
                status=TaskStatus.TIMEOUT, msg=f"timed out after {timeout_s} s", exit_code=None
            )
            return RunResult(outcome=outcome)
    pump.flush(force=True)
    if pump.error is not None:
        raise pump.error
    exit_info = engine.wait(container_id)
    outcome = classify_exit(exit_info, memory_mb)
    last_line = pump.last_line()
    if outcome.status is TaskStatus.ERROR and not exit_info.oom_killed and last_line:
        # As IronWorker did: the error's own last words, so `status` tells why.
        outcome = TaskOutcome(
            status=outcome.status, msg=f"{outcome.msg}: {last_line}", exit_code=outcome.exit_code
        )
    return RunResult(outcome=outcome)


def _measured(engine: Engine, container_id: str, result: RunResult, name: str) -> RunResult:
    """The result with what the container used, read now that it has ended (before removal)."""
    usage = _usage(engine, container_id, name)
    outcome = dataclasses.replace(
        result.outcome, cpu_time_ms=usage.cpu_time_ms, peak_memory_bytes=usage.peak_memory_bytes
    )
    return dataclasses.replace(result, outcome=outcome)


def _usage(engine: Engine, container_id: str, name: str) -> ResourceUsage:
    # Not knowing what a task used is no reason to fail it, nor to run it again.
    try:
        return engine.usage(container_id)
    except InfrastructureError as exc:
        log.warning(
            "container.usage_unknown",
            extra={"task_id": name, "container_id": container_id[:12], "error": exc.message},
        )
        return UNKNOWN_USAGE


def _cancelled() -> TaskOutcome:
    return TaskOutcome(status=TaskStatus.CANCELLED, msg=CANCELLED_MSG, exit_code=None)


def _kill_and_drain(engine: Engine, container_id: str, pump: LogPump) -> None:
    engine.kill(container_id)
    pump.join(PUMP_DRAIN_S)
    pump.flush(force=True)


def _remove(engine: Engine, container_id: str, name: str) -> None:
    try:
        engine.remove(container_id)
    except InfrastructureError as exc:
        # The reaper removes it later: it belongs to no active task any more.
        log.warning(
            "container.remove_failed",
            extra={"task_id": name, "container_id": container_id[:12], "error": exc.message},
        )
