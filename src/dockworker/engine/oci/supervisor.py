"""The supervisor of one task container: a small shell script, started in a session of its own
so that it outlives the runner (a runner killed with -9 and started again finds its tasks still
running, their output and exit recorded).

It runs in a private mount namespace, where it mounts the container's overlay root: the image's
layers under a writable layer on a tmpfs (so neither the mounts nor the writable layer can leak
onto the host: they go away with the container's namespaces), then runs the OCI
runtime in the foreground, which creates, starts, waits for and deletes the container and exits
with the container's status. The container's stdout and stderr are one pipe (with crun; runc
copies each through a pipe of its own), read in order by ``dd``, which writes each read at once
and keeps the first ``cap + 1`` bytes in the container's output file (the runner's log pump
applies the cap and its marker, as for the Docker path), while ``cat`` reads and drops the rest:
a flood neither blocks the task nor fills the disk.

Descriptors handed over by the runner: standard input is the OOM eventfd (cgroups.py) or
/dev/null; standard output is the container's lock, held (``flock``) by the supervisor and its
children for as long as any of them lives, so "the lock is free" means "everything is
recorded"; standard error is the supervisor's own log.

Files it writes in the container's directory: ``pid`` (by the runtime, once the container's
process runs), ``output``, ``exit`` (the runtime's status), ``oom`` (the eventfd's count, read
when the exit is not 0), ``runtime.log`` (the runtime's own messages)."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ...errors import EngineUnavailable

# Exit statuses of the script itself, before the runtime runs.
SETUP_FAILURES = {
    90: "cannot enter the image's layer directory",
    91: "cannot mount the container's root",
    92: "cannot hide the cgroup2 mount from the runtime",
}

# $1 container dir, $2 layer dir, $3 lowerdir (relative to $2, top layer first),
# $4 container id, $5 bytes of output to keep, $6 runtime binary, $7 runtime root,
# $8 "1" to hide the cgroup2 mount, $9 size of the root's writable layer (a tmpfs)
SCRIPT = r"""exec 8<&0 9>&1 </dev/null >/dev/null
mount -t tmpfs -o "mode=0755,size=$9" tmpfs "$1/scratch" || exit 91
mkdir "$1/scratch/upper" "$1/scratch/work" || exit 91
cd "$2" || exit 90
layers="lowerdir=$3,upperdir=$1/scratch/upper,workdir=$1/scratch/work"
mount -t overlay -o "$layers" overlay "$1/rootfs" || exit 91
if [ "$8" = 1 ]; then umount /sys/fs/cgroup/unified || exit 92; fi
{
  "$6" --root "$7" --log "$1/runtime.log" run --bundle "$1" --pid-file "$1/pid" "$4" 2>&1
  rc=$?
  [ "$rc" = 0 ] || od -An -tu8 -N8 <&8 >"$1/oom" 2>/dev/null
  echo "$rc" >"$1/exit"
} | { dd bs=64k count="$5" iflag=count_bytes status=none >>"$1/output"; exec cat >/dev/null; }
"""
NAME = "dockworker-supervisor"
BUSYBOX = "/bin/busybox"
BUSYBOX_APPLETS = frozenset({"unshare", "sh", "mount", "umount", "mkdir", "dd", "cat", "od"})


@dataclass(frozen=True)
class ContainerDir:
    """One container's directory: its OCI bundle and everything the supervisor records."""

    path: Path

    @property
    def id(self) -> str:
        return self.path.name

    @property
    def config(self) -> Path:
        return self.path / "config.json"

    @property
    def meta(self) -> Path:
        return self.path / "meta.json"

    @property
    def rootfs(self) -> Path:
        return self.path / "rootfs"

    @property
    def scratch(self) -> Path:
        """Where the supervisor mounts the tmpfs holding the root's writable layer."""
        return self.path / "scratch"

    @property
    def hostname(self) -> Path:
        return self.path / "hostname"

    @property
    def output(self) -> Path:
        return self.path / "output"

    @property
    def lock(self) -> Path:
        return self.path / "lock"

    @property
    def launched(self) -> Path:
        """Written (with the supervisor's pid) once the supervisor was started."""
        return self.path / "supervisor.pid"

    @property
    def supervisor_log(self) -> Path:
        return self.path / "supervisor.log"

    @property
    def runtime_log(self) -> Path:
        return self.path / "runtime.log"

    @property
    def pid(self) -> Path:
        return self.path / "pid"

    @property
    def exit(self) -> Path:
        return self.path / "exit"

    @property
    def oom(self) -> Path:
        return self.path / "oom"


@dataclass(frozen=True, kw_only=True)
class Toolset:
    """How the supervisor is started: a mount namespace of its own, and a shell. The host's
    static busybox, when there is one, does both, and runs mount, mkdir, dd, cat and od as
    built-in applets (no exec each): it halves what the supervisor costs before the runtime
    starts. Otherwise util-linux's unshare and /bin/sh with the host's commands."""

    unshare: tuple[str, ...]
    shell: tuple[str, ...]

    @classmethod
    def find(cls, busybox: str = BUSYBOX) -> Toolset:
        if _busybox_has(busybox, BUSYBOX_APPLETS):
            return cls(unshare=(busybox, "unshare"), shell=(busybox, "sh"))
        unshare = shutil.which("unshare")
        missing = [
            c for c in ("unshare", "mount", "umount", "mkdir", "dd", "cat", "od") if not shutil.which(c)
        ]
        if unshare is None or missing:
            raise EngineUnavailable(
                f"the OCI backend's supervisor needs {', '.join(missing)} (util-linux, coreutils)"
            )
        return cls(unshare=(unshare,), shell=("/bin/sh",))


def _busybox_has(busybox: str, applets: frozenset[str]) -> bool:
    try:
        listed = subprocess.run(
            [busybox, "--list"], capture_output=True, text=True, timeout=10, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return applets <= set(listed.split())


def argv(
    *,
    tools: Toolset,
    container: ContainerDir,
    layer_root: Path,
    lowerdir: str,
    keep_bytes: int,
    scratch_bytes: int,
    runtime_binary: str,
    runtime_root: Path,
    hide_unified: bool,
) -> list[str]:
    return [
        *tools.unshare,
        "--mount",
        "--propagation",
        "private",
        *tools.shell,
        "-c",
        SCRIPT,
        NAME,
        str(container.path),
        str(layer_root),
        lowerdir,
        container.id,
        str(keep_bytes),
        runtime_binary,
        str(runtime_root),
        "1" if hide_unified else "0",
        str(scratch_bytes),
    ]
