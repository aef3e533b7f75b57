"""The host's cgroup hierarchies, and what a cgroup's accounting says of the processes that ran
in it: CPU time and peak memory, read on cgroup v1 or v2.

Both figures are hierarchical: a cgroup counts what its descendants used, and keeps the count
after they are removed. Both backends rely on it: a container's own cgroup is deleted the moment
it exits, so each backend starts the container under a parent cgroup of dockworker's own and
reads the parent once the container has ended (measured on this project's hosts, see
docs/architecture.md, "What each task used").

* cgroup v1: ``cpuacct.usage`` (nanoseconds) and ``memory.max_usage_in_bytes`` (the memory
  counter's high-water mark, which a parent raises with every charge of a descendant).
* cgroup v2: ``cpu.stat``'s ``usage_usec`` and ``memory.peak`` (Linux 5.19 and later; before,
  the peak is unknown)."""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from pathlib import Path

from .types import UNKNOWN_USAGE, ResourceUsage

CGROUP_ROOT = Path("/sys/fs/cgroup")
# a cgroup v1 mount's options that are not controllers
_MOUNT_OPTIONS = frozenset({"rw", "ro", "relatime", "noatime", "nosuid", "nodev", "noexec", "clone_children"})
NS_PER_MS = 1_000_000
US_PER_MS = 1_000


@dataclass(frozen=True, kw_only=True)
class CgroupLayout:
    """The host's cgroup hierarchies, from /proc/self/mountinfo."""

    v1: tuple[Path, ...]  # every cgroup v1 hierarchy's mount point
    memory_v1: Path | None
    unified: Path | None  # the cgroup2 mount (all of /sys/fs/cgroup on a v2 host)
    cpuacct_v1: Path | None = None
    # each v1 controller (and named hierarchy) and where it is mounted
    v1_controllers: tuple[tuple[str, Path], ...] = ()

    @classmethod
    def detect(cls, mountinfo: str | None = None) -> CgroupLayout:
        text = mountinfo if mountinfo is not None else Path("/proc/self/mountinfo").read_text()
        v1: list[Path] = []
        memory: Path | None = None
        cpuacct: Path | None = None
        unified: Path | None = None
        controllers: list[tuple[str, Path]] = []
        for line in text.splitlines():
            fields = line.split()
            if " - " not in line or len(fields) < 5:
                continue
            after = line.split(" - ", 1)[1].split()
            if len(after) < 3:
                continue
            fstype, options = after[0], after[2].split(",")
            mount_point = Path(fields[4])
            if fstype == "cgroup2":
                unified = mount_point
            elif fstype == "cgroup":
                v1.append(mount_point)
                controllers += [(option, mount_point) for option in options if option not in _MOUNT_OPTIONS]
                if "memory" in options:
                    memory = mount_point
                if "cpuacct" in options:
                    cpuacct = mount_point
        return cls(
            v1=tuple(v1),
            memory_v1=memory,
            unified=unified,
            cpuacct_v1=cpuacct,
            v1_controllers=tuple(controllers),
        )

    def v1_of(self, controller: str) -> Path | None:
        """Where the v1 controller ``controller`` (``pids``, ``cpu``...) is mounted."""
        return next((path for name, path in self.v1_controllers if name == controller), None)

    @property
    def memory_on_v2(self) -> bool:
        return self.memory_v1 is None and self.unified is not None

    def hierarchies(self) -> tuple[Path, ...]:
        return self.v1 + ((self.unified,) if self.unified is not None else ())

    @functools.cached_property
    def hierarchy_paths(self) -> tuple[str, ...]:
        """:meth:`hierarchies` as strings, for the per-task removals (a dozen rmdirs a task:
        pathlib's parsing was most of their cost)."""
        return tuple(str(path) for path in self.hierarchies())

    def accounting_hierarchies(self) -> tuple[Path, ...]:
        """Where :func:`read_usage` reads: the v1 cpuacct and memory hierarchies, or the
        unified one for what v1 does not hold."""
        found = [p for p in (self.cpuacct_v1, self.memory_v1) if p is not None]
        if (self.cpuacct_v1 is None or self.memory_v1 is None) and self.unified is not None:
            found.append(self.unified)
        return tuple(dict.fromkeys(found))


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _stat_field(path: Path, key: str) -> int | None:
    """One ``key value`` line of a flat-keyed cgroup v2 file."""
    try:
        text = path.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            with contextlib.suppress(ValueError):
                return int(value)
    return None


def cpu_usage_ns(layout: CgroupLayout, relative: Path) -> int | None:
    if layout.cpuacct_v1 is not None:
        return _read_int(layout.cpuacct_v1 / relative / "cpuacct.usage")
    if layout.unified is not None:
        usec = _stat_field(layout.unified / relative / "cpu.stat", "usage_usec")
        return None if usec is None else usec * 1000
    return None


def peak_memory_bytes(layout: CgroupLayout, relative: Path) -> int | None:
    if layout.memory_v1 is not None:
        return _read_int(layout.memory_v1 / relative / "memory.max_usage_in_bytes")
    if layout.unified is not None:
        return _read_int(layout.unified / relative / "memory.peak")
    return None


def read_usage(layout: CgroupLayout, relative: Path) -> ResourceUsage:
    """What the processes that ran in the cgroup ``relative`` (to each hierarchy's root) and
    its descendants used. A container that ran has used some CPU: when the cgroup counted none,
    it did not see the container (e.g. the engine placed it in a cgroup namespace of its own),
    and nothing it says is taken."""
    cpu_ns = cpu_usage_ns(layout, relative)
    if not cpu_ns:
        return UNKNOWN_USAGE
    return ResourceUsage(
        cpu_time_ms=cpu_ns // NS_PER_MS, peak_memory_bytes=peak_memory_bytes(layout, relative)
    )
