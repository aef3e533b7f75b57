"""Each task container's cgroups, and the out-of-memory record that outlives them.

**Placed by dockworker (crun on a cgroup v1 host).** Moving a process into a cgroup takes a lock
that first waits for an RCU grace period when no other move happened in the last milliseconds:
6 to 16 ms on this project's 2-core host, half of a no-op task's start when the runtime made that
move for each container (docs/oci.md, "Where a start's time went"). So dockworker makes the
container's cgroup ``<scope>/<id>`` in every v1 hierarchy *before* the task is claimed, with a
parked supervisor's runtime-to-be already in it (``parking.py``); crun runs with its cgroup
manager disabled, and the container's processes are born in that cgroup. dockworker writes the
limits crun would have written (memory = memory + swap, the CPU quota, pids, the device rules and
crun's own device defaults) before the container starts, and moves crun's own process back out
once the container runs (off the task's path). The OOM kill is counted in the cgroup's
``memory.oom_control``, which stays until the container is removed.

**Made by the runtime (runc; crun on a cgroup v2 host).** The runtime creates the container's
own cgroup (``<scope>/<id>/task``) with every limit of the
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
import signal
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ...errors import InfrastructureError
from ..cgroupfs import CgroupLayout, read_usage
from ..types import ResourceUsage

SCOPE_DIR = "dockworker-oci"
LEAF = "task"
MEMORY_MARGIN = 2 * 1024 * 1024
CPU_PERIOD_US = 100_000
# What crun allows besides the spec's device rules, as it writes them on cgroup v1: mknod of any
# node (the capability is dropped anyway), /dev/full, the pseudo-terminals.
RUNTIME_DEVICE_RULES = ("c *:* m", "b *:* m", "c 1:7 rwm", "c 136:* rwm", "c 5:2 rwm")


# The v1 controllers whose limits dockworker writes when it places a container itself.
PLACED_CONTROLLERS = ("memory", "cpu", "pids", "devices")


def places_containers(layout: CgroupLayout) -> bool:
    """Whether dockworker can place containers in their cgroups itself: a cgroup v1 host with
    every controller it writes a limit in (the runtime must also be able to leave cgroups
    alone: crun). Otherwise the runtime makes them, with the spec's limits."""
    return all(layout.v1_of(controller) is not None for controller in PLACED_CONTROLLERS)


def _placed(layout: CgroupLayout, controller: str) -> Path:
    hierarchy = layout.v1_of(controller)
    if hierarchy is None:  # places_containers said otherwise
        raise InfrastructureError(f"no cgroup v1 {controller} controller: cannot place containers")
    return hierarchy


def device_rule(rule: Mapping[str, Any]) -> tuple[str, str]:
    """An OCI device rule as cgroup v1 takes it: (``devices.allow`` or ``devices.deny``, line)."""
    kind = str(rule.get("type") or "a")
    major = "*" if rule.get("major") is None else str(rule["major"])
    minor = "*" if rule.get("minor") is None else str(rule["minor"])
    target = "devices.allow" if rule.get("allow") else "devices.deny"
    return target, "a" if kind == "a" else f"{kind} {major}:{minor} {rule.get('access') or 'rwm'}"


_CPUSETS = threading.Lock()


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

    def create_parent(self) -> int | None:
        """Create the parent the runtime makes the container's cgroup under. On cgroup v1,
        returns an eventfd the kernel signals on each OOM of the parent (the caller hands it to
        the supervisor)."""
        parent = self._memory_parent()
        try:
            parent.mkdir(parents=True, exist_ok=True)
            if self._layout.memory_on_v2:
                _enable_memory_controller(self._layout.unified, parent)
                return None
            return _oom_eventfd(parent)
        except OSError as exc:
            with contextlib.suppress(InfrastructureError):
                self.remove()
            raise InfrastructureError(f"cannot set up the container's memory cgroup {parent}: {exc}") from exc

    def limit_parent(self, memory_bytes: int) -> None:
        """The enforced memory limit (= memory + swap), on the parent."""
        parent = self._memory_parent()
        try:
            if self._layout.memory_on_v2:
                _write(parent / "memory.max", str(memory_bytes))
                with contextlib.suppress(FileNotFoundError):
                    _write(parent / "memory.swap.max", "0")
                return
            _write(parent / "memory.limit_in_bytes", str(memory_bytes))
            with contextlib.suppress(FileNotFoundError):  # no swap accounting: no swap limit to set
                _write(parent / "memory.memsw.limit_in_bytes", str(memory_bytes))
        except OSError as exc:
            raise InfrastructureError(f"cannot set the container's memory limit on {parent}: {exc}") from exc

    # --- placed by dockworker (cgroup v1) ----------------------------------------------------

    def prepare(self) -> None:
        """Make the container's cgroup in every v1 hierarchy (an empty cpuset level gets its
        parent's CPUs and memory nodes, or nothing could move in)."""
        try:
            for hierarchy in self._layout.v1:
                path = hierarchy / self.relative
                path.mkdir(parents=True, exist_ok=True)
                if self._layout.v1_of("cpuset") != hierarchy:
                    continue
                levels = [p for p in (path, *path.parents) if hierarchy in p.parents]
                with _CPUSETS:  # a level made by another thread gets its values first
                    for level in reversed(levels):
                        for name in ("cpuset.cpus", "cpuset.mems"):
                            if not (level / name).read_text().strip():
                                _write(level / name, (level.parent / name).read_text().strip())
        except OSError as exc:
            with contextlib.suppress(InfrastructureError):
                self.remove()
            raise InfrastructureError(f"cannot make the container's cgroups: {exc}") from exc

    def place(self, pid: int) -> None:
        """Move the process ``pid`` into the container's cgroup in every v1 hierarchy."""
        for hierarchy in self._layout.v1:
            _write(hierarchy / self.relative / "cgroup.procs", str(pid))

    def move_out(self, pid: int) -> None:
        """Move the runtime (``pid``, not in the container's pid namespace) from the
        container's cgroup to the scope's, in every v1 hierarchy. Only while it is still in the
        container's cgroup: once it has ended, nothing of the container runs any more (it ends
        after the container's init, whose end ends every process in that pid namespace), so no
        other process can have its pid there, and a pid of a process elsewhere is left alone."""
        if pid not in self.processes():
            return
        try:
            for hierarchy in self._layout.v1:
                _write(hierarchy / self.relative.parent / "cgroup.procs", str(pid))
        except ProcessLookupError:
            return

    def limit(
        self, *, memory_bytes: int, cpus: float, pids: int, device_rules: Iterable[Mapping[str, Any]]
    ) -> None:
        """Write the limits crun would have written: memory = memory + swap, the CPU quota, the
        pids limit, the device rules, then crun's own device defaults."""
        layout = self._layout
        self.limit_parent(memory_bytes)
        try:
            cpu, pids_hierarchy, devices = (_placed(layout, c) for c in ("cpu", "pids", "devices"))
            if cpus > 0:
                _write(cpu / self.relative / "cpu.cfs_period_us", str(CPU_PERIOD_US))
                _write(cpu / self.relative / "cpu.cfs_quota_us", str(round(cpus * CPU_PERIOD_US)))
            if pids > 0:
                _write(pids_hierarchy / self.relative / "pids.max", str(pids))
            rules = [*map(device_rule, device_rules)]
            rules += [("devices.allow", rule) for rule in RUNTIME_DEVICE_RULES]
            for target, line in rules:
                _write(devices / self.relative / target, line)
        except OSError as exc:
            raise InfrastructureError(f"cannot set the container's limits: {exc}") from exc

    def processes(self) -> list[int]:
        """The processes in the container's cgroup (placed mode)."""
        hierarchy = self._layout.v1_of("pids") or self._layout.memory_v1
        if hierarchy is None:
            return []
        try:
            return [int(pid) for pid in (hierarchy / self.relative / "cgroup.procs").read_text().split()]
        except FileNotFoundError:
            return []

    def kill_all(self, timeout: float) -> None:
        """SIGKILL every process in the container's cgroup (placed mode; whatever their pid
        namespace: the runtime too) until none is left, or ``timeout``."""
        deadline = time.monotonic() + timeout
        while pids := self.processes():
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if time.monotonic() > deadline:
                raise InfrastructureError(f"processes still in the container's cgroup: {pids}")
            time.sleep(0.005)

    def oom_kills_v1(self) -> int:
        """The OOM kills counted in the container's own cgroup (placed mode; 0 when unknown)."""
        return self._oom_kill_count("memory.oom_control")

    def oom_kills_v2(self) -> int:
        """The OOM kills in the parent's subtree (cgroup v2 only; 0 when unknown)."""
        return self._oom_kill_count("memory.events")

    def _oom_kill_count(self, name: str) -> int:
        try:
            text = (self._memory_parent() / name).read_text()
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
