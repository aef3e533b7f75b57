"""The parent cgroups under which the Docker adapter starts task containers, so that what a
container used can be read after it has exited.

Docker deletes a container's own cgroup as soon as it exits: reading it at the end races with
any short task. So each task's container is created with ``HostConfig.CgroupParent`` set to a
cgroup of dockworker's own, ``/dockworker/<installation>/<task id>.<nonce>`` (the nonce keeps
two attempts of one task apart), made here before the container and removed once it is. The
parent counts the container's CPU time and memory high-water mark and keeps them after the
container's cgroup is gone (``cgroupfs.read_usage``). This needs Docker's ``cgroupfs`` cgroup
driver: with the ``systemd`` driver a parent is a slice that systemd owns, and usage is not
recorded (null).

runc creates the rest of the path in every hierarchy (cpuset included, which needs its parent's
settings copied, so only the accounting hierarchies are made here); removal takes it out of
all of them. The installation's directory is left in place while the engine is in use, and
tidied away when it closes (:meth:`AccountingParents.tidy`): runc makes the missing
directories of the path one after another, and one removed meanwhile by another task's
clean-up failed that container's start ("mkdir .../pids/dockworker/<installation>/...: no such
file or directory"). A runner killed between making a parent and removing it leaves the parent
behind: its reaper asks :meth:`task_ids` and removes those of tasks no longer active."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import secrets
from pathlib import Path

from .cgroupfs import CgroupLayout, read_usage
from .types import UNKNOWN_USAGE, ResourceUsage

log = logging.getLogger("dockworker.engine")

ROOT_DIR = "dockworker"
_NAME = r"[A-Za-z0-9_-]{1,64}"
_PARENT = re.compile(rf"^/{ROOT_DIR}/({_NAME})/({_NAME})\.([0-9a-f]{{8}})$")
_NAME_ONLY = re.compile(rf"^{_NAME}$")
# Errors that say this process may not manage cgroups at all (not root, a read-only mount).
_NOT_ALLOWED = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})


class AccountingParents:
    """Makes, reads and removes the per-task parent cgroups. Thread-safe (no state but the
    ``enabled`` flag, which only ever goes from True to False)."""

    def __init__(self, layout: CgroupLayout) -> None:
        self._layout = layout
        self.enabled = bool(layout.accounting_hierarchies())

    def create(self, installation: str, task_id: str) -> str | None:
        """Make a parent for a container of this task; returns the ``CgroupParent`` to create it
        with, or None when usage cannot be recorded (the container is created without one)."""
        if not self.enabled or not (_NAME_ONLY.match(installation) and _NAME_ONLY.match(task_id)):
            return None
        parent = f"/{ROOT_DIR}/{installation}/{task_id}.{secrets.token_hex(4)}"
        try:
            for hierarchy in self._layout.accounting_hierarchies():
                _make(hierarchy / parent.lstrip("/"))
        except OSError as exc:
            self.remove(parent)
            if exc.errno in _NOT_ALLOWED:
                self.enabled = False
                log.warning(
                    "engine.usage_unavailable: cannot make cgroups, task usage is not recorded",
                    extra={"error": str(exc)},
                )
            else:
                log.warning("engine.usage_parent_failed", extra={"task_id": task_id, "error": str(exc)})
            return None
        return parent

    @staticmethod
    def owns(cgroup_parent: str) -> bool:
        return _PARENT.match(cgroup_parent) is not None

    def usage(self, cgroup_parent: str) -> ResourceUsage:
        if not self.owns(cgroup_parent):
            return UNKNOWN_USAGE
        return read_usage(self._layout, Path(cgroup_parent.lstrip("/")))

    def remove(self, cgroup_parent: str) -> bool:
        """Remove the parent from every hierarchy (and its installation's directory once empty).
        False when a hierarchy still holds a container under it (it stays, for a later try)."""
        if not self.owns(cgroup_parent):
            return True
        relative = cgroup_parent.lstrip("/")
        busy: list[str] = []
        for hierarchy in self._layout.hierarchy_paths:
            try:
                _rmdir(f"{hierarchy}/{relative}")
            except OSError as exc:
                busy.append(f"{os.path.basename(hierarchy)}: {exc.strerror}")
        if busy:
            log.warning("engine.usage_parent_busy", extra={"cgroup": cgroup_parent, "error": "; ".join(busy)})
        return not busy

    def task_ids(self, installation: str) -> set[str]:
        """Tasks of this installation that have a parent cgroup in any hierarchy."""
        found: set[str] = set()
        if not _NAME_ONLY.match(installation):
            return found
        for hierarchy in self._layout.hierarchies():
            with contextlib.suppress(OSError):
                for entry in (hierarchy / ROOT_DIR / installation).iterdir():
                    task_id, dot, _ = entry.name.rpartition(".")
                    if dot and entry.is_dir() and self.owns(f"/{ROOT_DIR}/{installation}/{entry.name}"):
                        found.add(task_id)
        return found

    def tidy(self, installation: str) -> None:
        """Remove the installation's directory from every hierarchy where it is empty (the
        engine is closing: no task of this process will start under it any more)."""
        if not _NAME_ONLY.match(installation):
            return
        for hierarchy in self._layout.hierarchy_paths:
            with contextlib.suppress(OSError):  # still holds a parent, or already gone
                _rmdir(f"{hierarchy}/{ROOT_DIR}/{installation}")

    def release(self, installation: str, task_id: str) -> bool:
        """Remove every parent of this task (all its attempts'); False when one is still busy."""
        if not (_NAME_ONLY.match(installation) and _NAME_ONLY.match(task_id)):
            return True
        names: set[str] = set()
        for hierarchy in self._layout.hierarchies():
            with contextlib.suppress(OSError):
                names.update(e.name for e in (hierarchy / ROOT_DIR / installation).glob(f"{task_id}.*"))
        results = [self.remove(f"/{ROOT_DIR}/{installation}/{name}") for name in sorted(names)]
        return all(results)


def _make(path: Path) -> None:
    """mkdir -p that tolerates the installation's directory being removed meanwhile by the
    removal of another task's parent (it is removed once empty)."""
    for _ in range(5):
        try:
            path.mkdir(parents=True, exist_ok=True)
            return
        except FileNotFoundError:
            continue
    path.mkdir(parents=True, exist_ok=True)


def _rmdir(path: str) -> None:
    try:
        os.rmdir(path)
    except FileNotFoundError:
        return
