"""Each task container's cgroups, and the out-of-memory record that outlives them.

The runtime creates the container's own cgroup (``<scope>/<id>/task``) with every limit of the
OCI spec, and deletes it the moment the container exits: the kernel's OOM record for it goes
with it. So the container is placed under a parent of dockworker's own (``<scope>/<id>``) that
holds the enforced memory limit, while the container's cgroup allows ``MEMORY_MARGIN`` more: a
charge can then only fail at the parent (no single charge is larger than the margin), the OOM is
the parent's, and the parent is still there when the exit is read.

* cgroup v1: the kernel counts the OOM *kill* in the victim's own cgroup only, but it notifies
  the over-limit cgroup's ``memory.oom_control`` listeners. dockworker registers an eventfd on
  the parent before the container starts and hands it to the task's supervisor, which records
  the count when the container has exited (so an OOM is not lost if the runner is down then).
* cgroup v2: the parent's ``memory.events`` counts ``oom_kill`` for its whole subtree.

What the container used (CPU time, peak memory) is read from the same parent, which counts its
subtree and keeps the count once the runtime's leaf is gone (``cgroupfs.read_usage``). On cgroup
v1 the parent in the cpuacct hierarchy is made by the runtime (it creates the whole path) and
removed with the others.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

from ...errors import InfrastructureError
from ..cgroupfs import CgroupLayout, read_usage
from ..types import ResourceUsage

SCOPE_DIR = "dockworker-oci"
LEAF = "task"
MEMORY_MARGIN = 2 * 1024 * 1024


def _write(path: Path, value: str) -> None:
    with open(path, "w") as handle:
        handle.write(value)


def _rmdir(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.rmdir(path)


class TaskCgroups:
    """The cgroups of one container: ``<scope>/<container id>`` (dockworker's parent) and the
    runtime's ``task`` leaf under it."""

    def __init__(self, layout: CgroupLayout, scope: str, container_id: str) -> None:
        self._layout = layout
        self.relative = Path(SCOPE_DIR) / scope / container_id

    @property
    def runtime_path(self) -> str:
        """The OCI spec's ``cgroupsPath``."""
        return "/" + str(self.relative / LEAF)

    def _memory_parent(self) -> Path:
        base = self._layout.memory_v1 or self._layout.unified
        if base is None:
            raise InfrastructureError("no memory cgroup controller is mounted on this host")
        return base / self.relative

    def create(self, memory_bytes: int) -> int | None:
        """Create the parent with the enforced memory limit. On cgroup v1, returns an eventfd
        the kernel signals on each OOM of the parent (the caller hands it to the supervisor)."""
        parent = self._memory_parent()
        try:
            parent.mkdir(parents=True, exist_ok=True)
            if self._layout.memory_on_v2:
                _enable_memory_controller(self._layout.unified, parent)
                _write(parent / "memory.max", str(memory_bytes))
                with contextlib.suppress(FileNotFoundError):
                    _write(parent / "memory.swap.max", "0")
                return None
            _write(parent / "memory.limit_in_bytes", str(memory_bytes))
            with contextlib.suppress(FileNotFoundError):  # no swap accounting: no swap limit to set
                _write(parent / "memory.memsw.limit_in_bytes", str(memory_bytes))
            return _oom_eventfd(parent)
        except OSError as exc:
            self.remove()
            raise InfrastructureError(f"cannot set up the container's memory cgroup {parent}: {exc}") from exc

    def oom_kills_v2(self) -> int:
        """The OOM kills in the parent's subtree (cgroup v2 only; 0 when unknown)."""
        try:
            text = (self._memory_parent() / "memory.events").read_text()
        except (OSError, InfrastructureError):
            return 0
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def usage(self) -> ResourceUsage:
        """What the container used over its life; read once it has exited, before :meth:`remove`."""
        return read_usage(self._layout, self.relative)

    def remove(self) -> None:
        """Remove the parent (and a leaf the runtime left) in every hierarchy; what is not
        there is fine. A cgroup that still holds processes stays (``InfrastructureError``)."""
        busy: list[str] = []
        for hierarchy in self._layout.hierarchies():
            for path in (hierarchy / self.relative / LEAF, hierarchy / self.relative):
                try:
                    _rmdir(path)
                except OSError as exc:
                    if exc.errno != errno.EBUSY:
                        raise InfrastructureError(f"cannot remove cgroup {path}: {exc}") from exc
                    busy.append(str(path))
        if busy:
            raise InfrastructureError(f"cgroups still in use: {', '.join(busy)}")

    @staticmethod
    def remove_scope(layout: CgroupLayout, scope: str) -> None:
        """Remove the scope's directory where it holds no container any more."""
        for hierarchy in layout.hierarchies():
            with contextlib.suppress(OSError):
                os.rmdir(hierarchy / SCOPE_DIR / scope)


def _oom_eventfd(parent: Path) -> int:
    event = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    try:
        control = os.open(parent / "memory.oom_control", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _write(parent / "cgroup.event_control", f"{event} {control}")
        finally:
            os.close(control)
    except OSError:
        os.close(event)
        raise
    return event


def _enable_memory_controller(unified: Path | None, parent: Path) -> None:
    """On cgroup v2, a cgroup's children get the memory controller only when every ancestor
    delegates it (``+memory`` in ``cgroup.subtree_control``)."""
    if unified is None:
        return
    chain = [parent.parent, *parent.parent.parents]
    for ancestor in reversed([p for p in chain if p == unified or unified in p.parents]):
        with contextlib.suppress(OSError):
            _write(ancestor / "cgroup.subtree_control", "+memory")


def scope_container_ids(layout: CgroupLayout, scope: str) -> set[str]:
    """Container ids that have a cgroup under this scope in any hierarchy (for the sweep)."""
    found: set[str] = set()
    for hierarchy in layout.hierarchies():
        base = hierarchy / SCOPE_DIR / scope
        with contextlib.suppress(OSError):
            found.update(entry.name for entry in base.iterdir() if entry.is_dir())
    return found
