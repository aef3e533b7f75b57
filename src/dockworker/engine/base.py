"""The engine contract: everything the runner and ``run-local`` ask of a container runtime.
The Docker adapter implements it; so do the tests' in-memory engine and any later backend.

Failures are raised in dockworker's error families only: :class:`InfrastructureError` (and
:class:`EngineUnavailable` when the runtime cannot be reached, :class:`ContainerGone` when the
container no longer exists) or :class:`TaskSetupError` (:class:`ImageMissing`, a command that
cannot start)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from ..names import TASK_LABEL
from .types import ContainerInfo, ContainerSpec, ExitInfo, ResourceUsage


class Engine(Protocol):
    def ping(self) -> None:
        """Raise EngineUnavailable unless the runtime answers."""
        ...

    def close(self) -> None: ...

    def image_exists(self, ref: str) -> bool: ...

    def create(self, spec: ContainerSpec) -> str:
        """Create (not start) a container; returns its id."""
        ...

    def attach(self, container_id: str) -> Iterator[bytes]:
        """The container's output (stdout and stderr interleaved) from its start to its exit.
        Called before :meth:`start`, so nothing is missed; iteration errors are classified."""
        ...

    def follow_logs(self, container_id: str) -> Iterator[bytes]:
        """A started container's output from its beginning, then live until it exits."""
        ...

    def start(self, container_id: str) -> None: ...

    def wait(self, container_id: str, timeout: float = 30) -> ExitInfo:
        """Wait for the container to exit (it should already have) and read its outcome."""
        ...

    def usage(self, container_id: str) -> ResourceUsage:
        """What the container used over its whole life (CPU time, peak memory), from accounting
        that outlives it: called once it has exited (after :meth:`wait`, or after :meth:`kill`),
        before :meth:`remove`. Figures the engine cannot tell are None."""
        ...

    def accounted_tasks(self, installation_id: str) -> set[str]:
        """Tasks of this installation for which the engine keeps usage accounting apart from
        their containers (made before a container and removed after it: a process killed in
        between leaves it). Empty for an engine whose accounting goes with each container."""
        ...

    def release_accounting(self, installation_id: str, task_id: str) -> bool:
        """Remove what :meth:`accounted_tasks` found for a task that is no longer active; False
        when a container of it still holds part of it (tried again later)."""
        ...

    def kill(self, container_id: str) -> None:
        """Stop the container at once; a container already exited or gone is fine."""
        ...

    def remove(self, container_id: str) -> None:
        """Remove the container, running or not; a container already gone is fine."""
        ...

    def list_labelled(self, label: str = TASK_LABEL) -> list[ContainerInfo]:
        """Containers in any state carrying ``label`` (``key`` or ``key=value``)."""
        ...

    def started_at(self, container_id: str) -> float | None:
        """When the container's process was started (epoch seconds), or None if it never was."""
        ...

    def memory_limit(self, container_id: str) -> int:
        """The container's memory limit in bytes."""
        ...
