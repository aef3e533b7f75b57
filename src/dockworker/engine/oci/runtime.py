"""The OCI runtime binary (runc or crun) and the calls dockworker makes to it outside a task's
supervisor: kill, delete, list. Its state lives under a root of dockworker's own (never
Docker's), so ``list`` shows only dockworker's containers.

crun 1.8 refuses to run at all on a "hybrid" cgroup host (v1 controllers, plus a cgroup2 mount
at /sys/fs/cgroup/unified holding a controller). The supervisor therefore unmounts that cgroup2
mount in the task's private mount namespace before it starts crun (``hide_unified``): the host's
mounts are untouched, and the container only misses the hierarchy Docker does not limit
anything in on such a host (hugetlb)."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ...errors import EngineUnavailable, InfrastructureError

RUNTIMES = ("runc", "crun")
CALL_TIMEOUT_S = 30.0
UNIFIED_MOUNT = Path("/sys/fs/cgroup/unified")
# What the runtimes say when the container is already gone or already stopped.
_GONE_MARKERS = ("does not exist", "not exist", "no such file or directory", "cannot open directory")
_NOT_RUNNING_MARKERS = ("not running", "container not running", "is stopped", "process already finished")


def hybrid_unified_has_controllers(unified: Path = UNIFIED_MOUNT) -> bool:
    """True when a hybrid host's cgroup2 mount holds controllers (what crun refuses)."""
    try:
        return bool((unified / "cgroup.controllers").read_text().split())
    except OSError:
        return False


@dataclass(frozen=True, kw_only=True)
class Runtime:
    name: str
    binary: str
    state_root: Path
    # crun on a hybrid host: hide the cgroup2 mount from it (see the module's docstring).
    hide_unified: bool = False

    @classmethod
    def find(cls, name: str, state_root: Path) -> Runtime:
        if name not in RUNTIMES:
            raise InfrastructureError(f"unknown OCI runtime {name!r}: choose one of {', '.join(RUNTIMES)}")
        binary = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")
        if binary is None:
            raise EngineUnavailable(f"the OCI runtime {name} is not installed (apt-get install {name})")
        hide = name == "crun" and hybrid_unified_has_controllers()
        return cls(name=name, binary=binary, state_root=state_root, hide_unified=hide)

    def base_argv(self) -> list[str]:
        return [self.binary, "--root", str(self.state_root)]

    def knows(self, container_id: str) -> bool:
        """Whether the runtime still holds state for this container (both runtimes keep one
        directory per container, named by its id, under their root)."""
        return (self.state_root / container_id).exists()

    def version(self) -> str:
        return self._call(["--version"], "version").splitlines()[0]

    def kill(self, container_id: str, signal: str = "KILL") -> None:
        """Signal every process of the container; a container already stopped or gone is fine."""
        try:
            self._call(["kill", "--all", container_id, signal], "kill container")
        except InfrastructureError as exc:
            lowered = str(exc).lower()
            if not any(marker in lowered for marker in _GONE_MARKERS + _NOT_RUNNING_MARKERS):
                raise

    def delete(self, container_id: str) -> None:
        """Forget the container (killing it first if it still runs); gone already is fine."""
        if not self.knows(container_id):
            return
        try:
            self._call(["delete", "--force", container_id], "delete container")
        except InfrastructureError as exc:
            lowered = str(exc).lower()
            if not any(marker in lowered for marker in _GONE_MARKERS) or self.knows(container_id):
                raise

    def container_ids(self) -> list[str]:
        """Every container the runtime holds state for under dockworker's root."""
        if not self.state_root.is_dir():
            return []
        return sorted(entry.name for entry in self.state_root.iterdir() if entry.is_dir())

    def _call(self, args: list[str], action: str) -> str:
        try:
            done = subprocess.run(
                [*self.base_argv(), *args],
                capture_output=True,
                text=True,
                timeout=CALL_TIMEOUT_S,
                check=False,
                stdin=subprocess.DEVNULL,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise InfrastructureError(f"{action}: {self.name} failed: {exc}") from exc
        if done.returncode != 0:
            message = (done.stderr or done.stdout).strip() or f"exit status {done.returncode}"
            raise InfrastructureError(f"{action}: {self.name}: {message}")
        return done.stdout
