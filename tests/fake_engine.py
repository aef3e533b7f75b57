"""An in-memory engine implementing the ``Engine`` contract, for the runner's unit tests.

Each container plays a :class:`Script`: the output it prints, then its exit (at once, or once
its ``release`` event is set, or when killed). Any step can be made to fail with
:meth:`FakeEngine.fail`. Everything is thread-safe, as the runner's task threads share it."""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Unpack

from dockworker.engine import ContainerInfo, ContainerSpec, ExitInfo, ResourceUsage
from dockworker.errors import ContainerGone, ImageMissing, InfrastructureError
from dockworker.models import CodeSpec, Task
from dockworker.names import INSTALLATION_LABEL, TASK_LABEL
from dockworker.runner.codecache import CodeCache
from dockworker.runner.contract import PROGRESS_PATH
from dockworker.runner.execution import RunnerContext, TaskExecution
from dockworker.settings import Limits, load_settings
from dockworker.stacks.catalog import get_stack
from dockworker.store import open_store
from tests.helpers import QueueOptions, queue, save_code

KILLED_EXIT = 128 + 9
STEPS = (
    "ping",
    "create",
    "attach",
    "read",
    "follow_logs",
    "start",
    "wait",
    "kill",
    "remove",
    "list_labelled",
    "started_at",
    "memory_limit",
    "usage",
)
MEASURED = ResourceUsage(cpu_time_ms=12, peak_memory_bytes=3 * 1024 * 1024)


@dataclass(kw_only=True)
class Script:
    """What a container does once started."""

    output: list[bytes] = field(default_factory=list)
    exit_code: int = 0
    oom_killed: bool = False
    error: str = ""
    # When given, the container keeps running (after its output) until this is set.
    release: threading.Event | None = None
    # What the engine says the container used.
    usage: ResourceUsage = MEASURED
    # Written to the progress channel once started, after the output (as one write each).
    progress: list[bytes] = field(default_factory=list)


@dataclass(kw_only=True)
class FakeContainer:
    id: str
    spec: ContainerSpec
    script: Script
    started_at: float | None = None
    exit: ExitInfo | None = None
    output: list[bytes] = field(default_factory=list)
    killed: bool = False


class FakeEngine:
    def __init__(self, images: tuple[str, ...] = (get_stack("busybox").image,)) -> None:
        self.images = set(images)
        self.containers: dict[str, FakeContainer] = {}
        self.removed: list[str] = []
        # (installation, task id) of the usage accounting kept apart from containers, as the
        # Docker engine's parent cgroups: made at create, removed with the container.
        self.accounting: set[tuple[str, str]] = set()
        self.calls: list[str] = []
        self._failures: dict[str, list[Exception]] = {}
        self._scripts: list[Script] = []
        self._default = Script()
        self._ids = itertools.count(1)
        self._changed = threading.Condition()

    # --- test controls --------------------------------------------------------------------------

    def program(self, *scripts: Script) -> None:
        """The scripts of the next containers created, in order (then the default)."""
        with self._changed:
            self._scripts.extend(scripts)

    def default(self, script: Script) -> None:
        self._default = script

    def fail(self, step: str, error: Exception | None = None, times: int = 1) -> None:
        """Make the next ``times`` calls of ``step`` raise ``error`` (an engine 5xx by default).
        Step "read" fails the output stream after what it has already given."""
        assert step in STEPS, step
        failure = error or InfrastructureError(f"{step}: engine error 500: injected")
        with self._changed:
            self._failures.setdefault(step, []).extend([failure] * times)

    def heal(self) -> None:
        with self._changed:
            self._failures.clear()

    def kill_from_outside(self, container_id: str, exit_code: int = KILLED_EXIT) -> None:
        """As an operator's ``docker kill`` would."""
        self._exit(container_id, ExitInfo(exit_code=exit_code, oom_killed=False))

    def write_progress(self, container_id: str, data: bytes) -> None:
        """What the container's worker writes to $PROGRESS_FILE: open, write, close."""
        container = self.containers[container_id]
        (fifo,) = [b.source for b in container.spec.binds if b.target == PROGRESS_PATH]
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # fails at once if nobody reads it
        try:
            os.write(fd, data)
        finally:
            os.close(fd)

    def only(self) -> FakeContainer:
        (container,) = self.containers.values()
        return container

    def adopt_running(self, spec: ContainerSpec, script: Script) -> str:
        """A container started by an earlier runner process (for re-adoption tests)."""
        container_id = self.create(spec, script=script)
        self.start(container_id)
        return container_id

    def wait_until(self, condition: Callable[[], bool], timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        with self._changed:
            while not condition():
                left = deadline - time.monotonic()
                assert left > 0, "the fake engine did not reach the expected state in time"
                self._changed.wait(min(left, 0.05))

    # --- the contract ---------------------------------------------------------------------------

    def _step(self, step: str, container_id: str = "") -> None:
        with self._changed:
            self.calls.append(step)
            queued = self._failures.get(step)
            failure = queued.pop(0) if queued else None
        if failure is not None:
            raise failure
        if container_id and container_id not in self.containers:
            raise ContainerGone(f"{step}: no such container: {container_id}")

    def ping(self) -> None:
        self._step("ping")

    def close(self) -> None:
        pass

    def image_exists(self, ref: str) -> bool:
        return ref in self.images

    def create(self, spec: ContainerSpec, *, script: Script | None = None) -> str:
        self._step("create")
        if spec.image not in self.images:
            raise ImageMissing(f"image not found on the engine: No such image: {spec.image}")
        with self._changed:
            if script is None:
                script = self._scripts.pop(0) if self._scripts else self._default
            container_id = f"{next(self._ids):064x}"
            self.containers[container_id] = FakeContainer(id=container_id, spec=spec, script=script)
            self.accounting.add(_accounting_key(spec))
            self._changed.notify_all()
        return container_id

    def _stream(self, container: FakeContainer, step: str) -> Iterator[bytes]:
        sent = 0
        while True:
            with self._changed:
                while sent == len(container.output) and container.exit is None:
                    self._changed.wait(0.05)
                chunks = container.output[sent:]
                sent = len(container.output)
                finished = container.exit is not None
                queued = self._failures.get("read")
                failure = queued.pop(0) if queued else None
            yield from chunks
            if failure is not None:
                raise failure
            if finished:
                return

    def attach(self, container_id: str) -> Iterator[bytes]:
        self._step("attach", container_id)
        return self._stream(self.containers[container_id], "attach")

    def follow_logs(self, container_id: str) -> Iterator[bytes]:
        self._step("follow_logs", container_id)
        return self._stream(self.containers[container_id], "follow_logs")

    def start(self, container_id: str) -> None:
        self._step("start", container_id)
        container = self.containers[container_id]
        with self._changed:
            container.started_at = time.time()
            container.output.extend(container.script.output)
            self._changed.notify_all()
        for report in container.script.progress:
            self.write_progress(container_id, report)
        release = container.script.release
        if release is None:
            self._exit(container_id, self._scripted_exit(container))
            return

        def wait_for_release() -> None:
            while not release.wait(0.02):
                if container.exit is not None:
                    return
            self._exit(container_id, self._scripted_exit(container))

        threading.Thread(target=wait_for_release, daemon=True).start()

    @staticmethod
    def _scripted_exit(container: FakeContainer) -> ExitInfo:
        script = container.script
        return ExitInfo(exit_code=script.exit_code, oom_killed=script.oom_killed, error=script.error)

    def _exit(self, container_id: str, exit_info: ExitInfo) -> None:
        with self._changed:
            container = self.containers.get(container_id)
            if container is not None and container.exit is None and container.started_at is not None:
                container.exit = exit_info
            self._changed.notify_all()

    def wait(self, container_id: str, timeout: float = 30) -> ExitInfo:
        self._step("wait", container_id)
        container = self.containers[container_id]
        self.wait_until(lambda: container.exit is not None or container.started_at is None, timeout)
        return container.exit or ExitInfo(exit_code=0, oom_killed=False)

    def usage(self, container_id: str) -> ResourceUsage:
        self._step("usage", container_id)
        container = self.containers[container_id]
        return container.script.usage if container.started_at is not None else ResourceUsage()

    def accounted_tasks(self, installation_id: str) -> set[str]:
        with self._changed:
            return {task for installation, task in self.accounting if installation == installation_id}

    def release_accounting(self, installation_id: str, task_id: str) -> bool:
        with self._changed:
            self.accounting.discard((installation_id, task_id))
        return True

    def kill(self, container_id: str) -> None:
        try:
            self._step("kill", container_id)
        except ContainerGone:
            return
        self.containers[container_id].killed = True
        self._exit(container_id, ExitInfo(exit_code=KILLED_EXIT, oom_killed=False))

    def remove(self, container_id: str) -> None:
        try:
            self._step("remove", container_id)
        except ContainerGone:
            return
        with self._changed:
            container = self.containers.pop(container_id)
            if container.exit is None and container.started_at is not None:
                container.exit = ExitInfo(exit_code=KILLED_EXIT, oom_killed=False)
            self.removed.append(container_id)
            self.accounting.discard(_accounting_key(container.spec))
            self._changed.notify_all()

    def list_labelled(self, label: str = "dockworker.task") -> list[ContainerInfo]:
        self._step("list_labelled")
        key, _, value = label.partition("=")
        with self._changed:
            return [
                ContainerInfo(id=c.id, labels=dict(c.spec.labels))
                for c in self.containers.values()
                if key in c.spec.labels and (not value or c.spec.labels[key] == value)
            ]

    def started_at(self, container_id: str) -> float | None:
        self._step("started_at", container_id)
        return self.containers[container_id].started_at

    def memory_limit(self, container_id: str) -> int:
        self._step("memory_limit", container_id)
        return self.containers[container_id].spec.memory_bytes


def _accounting_key(spec: ContainerSpec) -> tuple[str, str]:
    return (spec.labels.get(INSTALLATION_LABEL, ""), spec.labels.get(TASK_LABEL, ""))


class Harness:
    """A real SQLite store in a temporary directory, a fake engine, and the settings a unit
    test of the runner needs (short intervals, the test process's own uid for task files)."""

    def __init__(self, tmp_path: Path, **overrides: Any) -> None:
        data = tmp_path / "data"
        values: dict[str, Any] = dict(
            data_dir=data,
            store_url=f"sqlite:///{(data / 'dockworker.db').resolve()}",
            slots=2,
            runner_id="unit-runner",
            poll_interval_s=0.02,
            heartbeat_interval_s=0.1,
            lease_ttl_s=5.0,
            infra_retry_base_delay_s=0.01,
            infra_retry_max_delay_s=0.05,
            shutdown_grace_s=2.0,
            task_user=f"{os.getuid()}:{os.getgid()}",
            limits=Limits(memory_mb=64, timeout_s=30),
        )
        values.update(overrides)
        self.settings = load_settings(env={}, **values)
        self.store = open_store(self.settings.database_url)
        self.store.migrate()
        self.engine = FakeEngine()
        self.project = self.store.create_project("unit").id
        self.context = RunnerContext(
            settings=self.settings,
            store=self.store,
            engine=self.engine,
            code_cache=CodeCache(self.settings.code_cache_dir, self.store),
            runner_id=self.settings.runner_id or "",
            installation_id=self.store.installation_id(),
        )
        self.context.engine_ok.set()
        self.context.host_ok.set()

    def close(self) -> None:
        self.store.close()

    def code(self, name: str = "hello", files: dict[str, str | bytes] | None = None, **spec: Any) -> None:
        spec.setdefault("stack", "busybox")
        spec.setdefault("command", "sh main.sh")
        save_code(self.store, self.project, CodeSpec(name=name, **spec), files or {"main.sh": "true"})

    def claimed(self, name: str = "hello", **task: Unpack[QueueOptions]) -> Task:
        """A task of package ``name``, claimed by this runner."""
        queued = queue(self.store, self.project, name, **task)
        claimed = self.store.claim(self.context.runner_id, ["default"], self.settings.lease_ttl_s)
        assert claimed is not None and claimed.id == queued.id
        return claimed

    def claim_again(self, task_id: str) -> Task:
        """The same task, claimed again once its retry backoff has passed."""
        deadline = time.monotonic() + 10
        while (claimed := self.store.claim(self.context.runner_id, ["default"], 5.0)) is None:
            assert time.monotonic() < deadline, f"task {task_id} was not claimable again"
            time.sleep(0.01)
        assert claimed.id == task_id
        return claimed

    def execute(self, task: Task, **kwargs: Any) -> TaskExecution:
        execution = TaskExecution(task, self.context, **kwargs)
        execution.run()
        return execution

    def kinds(self, task_id: str) -> list[str]:
        return [e.kind for e in self.store.list_events(task_id)]
