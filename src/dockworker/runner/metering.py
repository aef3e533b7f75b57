"""What the engine did, measured where the runner calls it: how long each task's container took
to be created and started, and which engine calls failed. ``MeteredEngine`` wraps any engine;
the meter is the process's metrics (``api/metrics.RunnerMetrics`` under ``dockworker up``, a
metrics port of its own for ``dockworker runner``), or nothing."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Protocol, TypeVar

from ..engine.base import Engine
from ..engine.types import ContainerInfo, ContainerSpec, ExitInfo, ResourceUsage
from ..errors import InfrastructureError
from ..names import TASK_LABEL

T = TypeVar("T")


class EngineMeter(Protocol):
    def container_started(self, seconds: float) -> None:
        """A task's container was created and started in ``seconds`` (the engine's time)."""
        ...

    def engine_error(self, operation: str) -> None:
        """An engine call failed for the infrastructure's reasons (unreachable, 5xx...)."""
        ...


class NoMeter:
    def container_started(self, seconds: float) -> None:
        pass

    def engine_error(self, operation: str) -> None:
        pass


class MeteredEngine:
    """The engine, its calls measured. ``meter`` may be replaced while it runs (``up`` makes
    the API, which holds the metrics, after the runner)."""

    def __init__(self, engine: Engine, meter: EngineMeter | None = None) -> None:
        self.engine = engine
        self.meter: EngineMeter = meter or NoMeter()
        self._created: dict[str, float] = {}  # container id -> seconds its create took
        self._lock = threading.Lock()

    def _call(self, operation: str, call: Callable[[], T]) -> T:
        try:
            return call()
        except InfrastructureError:
            self.meter.engine_error(operation)
            raise

    def ping(self) -> None:
        self._call("ping", self.engine.ping)

    def close(self) -> None:
        self.engine.close()

    def image_exists(self, ref: str) -> bool:
        return self._call("image_exists", lambda: self.engine.image_exists(ref))

    def create(self, spec: ContainerSpec) -> str:
        started = time.monotonic()
        container_id = self._call("create", lambda: self.engine.create(spec))
        with self._lock:
            self._created[container_id] = time.monotonic() - started
        return container_id

    def attach(self, container_id: str) -> Iterator[bytes]:
        return self._call("attach", lambda: self.engine.attach(container_id))

    def follow_logs(self, container_id: str) -> Iterator[bytes]:
        return self._call("follow_logs", lambda: self.engine.follow_logs(container_id))

    def start(self, container_id: str) -> None:
        started = time.monotonic()
        self._call("start", lambda: self.engine.start(container_id))
        took = time.monotonic() - started
        with self._lock:
            created = self._created.pop(container_id, None)
        if created is not None:
            self.meter.container_started(created + took)

    def wait(self, container_id: str, timeout: float = 30) -> ExitInfo:
        return self._call("wait", lambda: self.engine.wait(container_id, timeout))

    def usage(self, container_id: str) -> ResourceUsage:
        return self._call("usage", lambda: self.engine.usage(container_id))

    def kill(self, container_id: str) -> None:
        self._call("kill", lambda: self.engine.kill(container_id))

    def remove(self, container_id: str) -> None:
        with self._lock:
            self._created.pop(container_id, None)  # never started
        self._call("remove", lambda: self.engine.remove(container_id))

    def list_labelled(self, label: str = TASK_LABEL) -> list[ContainerInfo]:
        return self._call("list", lambda: self.engine.list_labelled(label))

    def started_at(self, container_id: str) -> float | None:
        return self._call("inspect", lambda: self.engine.started_at(container_id))

    def memory_limit(self, container_id: str) -> int:
        return self._call("inspect", lambda: self.engine.memory_limit(container_id))

    def accounted_tasks(self, installation_id: str) -> set[str]:
        return self._call("accounting", lambda: self.engine.accounted_tasks(installation_id))

    def release_accounting(self, installation_id: str, task_id: str) -> bool:
        return self._call("accounting", lambda: self.engine.release_accounting(installation_id, task_id))
