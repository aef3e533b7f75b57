"""The supervisor of one task container: a small shell script, started in a session of its own
so that it outlives the runner (a runner killed with -9 and started again finds its tasks still
running, their output and exit recorded).

It is started before the task is known, *parked* (``parking.py``): it waits for the task's line
from the runner, so that what costs time and needs no task (the processes, the mount namespace,
placing the runtime-to-be in the container's cgroup) is done off the task's path.

It runs in a private mount namespace, where its runtime side mounts the container's overlay root:
the image's layers under a writable layer on a tmpfs (so neither the mounts nor the writable
layer can leak onto the host: they go away with the container's namespaces), then becomes the
OCI runtime, which creates, starts, waits for and deletes the container and exits with the
container's status. The container's stdout and stderr are one pipe (with crun; runc copies each
through a pipe of its own), read in order by ``dd`` (busybox's; coreutils' ``head -c`` where
there is no static busybox: GNU dd with a byte count stops after a short read), which writes
each read at once and keeps the
first ``cap + 1`` bytes in the container's output file (the runner's log pump applies the cap and
its marker, as for the Docker path), while ``cat`` reads and drops the rest: a flood neither
blocks the task nor fills the disk.

Descriptors handed over by the runner: standard input is the OOM eventfd (cgroups.py; when the
runtime makes the container's cgroup on cgroup v1) or /dev/null; standard output is the
container's lock, held (``flock``) by the supervisor and its children for as long as any of them
lives, so "the lock is free" means "everything is recorded"; standard error is the supervisor's
own log; and three pipes, named by number in its arguments: where the runtime side reports its
process id (which the runner places in the container's cgroup), where it reads the task's line
(the image's layers, the size of the writable layer), and where the output side reads how many
bytes to keep. A pipe closed before its line came (the runner went away, or dismissed it) ends
the supervisor without starting anything.

Files it writes in the container's directory: ``pid`` (by the runtime, once the container's
process runs), ``output``, ``exit`` (the runtime's status), ``oom`` (the eventfd's count, read
when the exit is not 0), ``setup`` (instead of ``exit``: why nothing was started, a status of
``SETUP_FAILURES``), ``runtime.log`` (the runtime's own messages)."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ...errors import EngineUnavailable

# Exit statuses of the script itself when it started nothing (also written to ``setup``).
SETUP_FAILURES = {
    90: "cannot enter the image's layer directory",
    91: "cannot mount the container's root",
    92: "cannot hide the cgroup2 mount from the runtime",
    93: "its supervisor was dismissed before the start",
}

# $1 report pipe (write), $2 task line pipe (read), $3 output line pipe (read), $4 container
# dir, $5 layer dir, $6 container id, $7 runtime binary, $8 the runtime's global options (split
# on spaces; may be empty), $9 runtime root, ${10} "1" to hide the cgroup2 mount, ${11} "head" to
# keep the output's first bytes with head -c (else dd).
# The task's line: the lower layers (relative to $5, top first) and the writable layer's size.
SCRIPT = r"""exec 4>&"$1" 3<&"$2" 5<&"$3" 8<&0 9>&1 </dev/null >/dev/null
eval "exec $1>&- $2<&- $3<&-"
set -o pipefail
{
  exec 5<&-
  read -r me _ </proc/self/stat; echo "$me" >&4; exec 4>&-
  setup() { echo "$1" >"$d/setup"; exit "$1"; }
  d=$4
  read -r lowerdir scratch <&3 || setup 93
  exec 3<&-
  mount -t tmpfs -o "mode=0755,size=$scratch" tmpfs "$d/scratch" || setup 91
  mkdir "$d/scratch/upper" "$d/scratch/work" || setup 91
  cd "$5" || setup 90
  layers="lowerdir=$lowerdir,upperdir=$d/scratch/upper,workdir=$d/scratch/work"
  mount -t overlay -o "$layers" overlay "$d/rootfs" || setup 91
  if [ "${10}" = 1 ]; then umount /sys/fs/cgroup/unified || setup 92; fi
  exec "$7" $8 --root "$9" --log "$d/runtime.log" run --bundle "$d" --pid-file "$d/pid" "$6" 2>&1
} | {
  exec 3<&- 4>&-
  read -r keep <&5 || exit 0
  exec 5<&-
  if [ "${11}" = head ]; then head -c "$keep"
  else dd bs=64k count="$keep" iflag=count_bytes status=none; fi >>"$4/output"
  exec cat >/dev/null
}
rc=$?
if [ -f "$4/setup" ]; then read -r failed <"$4/setup"; exit "$failed"; fi
[ "$rc" = 0 ] || od -An -tu8 -N8 <&8 >"$4/oom" 2>/dev/null
echo "$rc" >"$4/exit"
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

    @property
    def setup(self) -> Path:
        return self.path / "setup"

    @property
    def parked(self) -> Path:
        """Written when the directory is made for a parked supervisor: the parking process
        (its pid and start time), then the supervisor's pid. A sweep removes the directory of
        another process's once its lock is free and it holds no container."""
        return self.path / "parked"


@dataclass(frozen=True, kw_only=True)
class Toolset:
    """How the supervisor is started: a mount namespace of its own, and a shell. The host's
    static busybox, when there is one, does both, and runs mount, mkdir, dd, cat and od as
    built-in applets (no exec each): it halves what the supervisor costs before the runtime
    starts. Otherwise util-linux's unshare and bash with the host's commands (the script
    names descriptors above 9 and sets pipefail, which a POSIX-only /bin/sh such as dash does
    not take)."""

    unshare: tuple[str, ...]
    shell: tuple[str, ...]
    # what keeps the first bytes of the output and writes each read at once: busybox's dd
    # counts bytes across short reads; coreutils' dd stops after one short read, its head does not
    keep_first: str = "dd"

    @classmethod
    def find(cls, busybox: str = BUSYBOX) -> Toolset:
        if _busybox_has(busybox, BUSYBOX_APPLETS):
            return cls(unshare=(busybox, "unshare"), shell=(busybox, "sh"), keep_first="dd")
        unshare, bash = shutil.which("unshare"), shutil.which("bash")
        needed = ("unshare", "bash", "mount", "umount", "mkdir", "head", "cat", "od")
        missing = [command for command in needed if not shutil.which(command)]
        if unshare is None or bash is None or missing:
            raise EngineUnavailable(
                f"the OCI backend's supervisor needs {', '.join(missing)} (util-linux, coreutils, bash;"
                " or a static busybox at /bin/busybox)"
            )
        return cls(unshare=(unshare,), shell=(bash,), keep_first="head")


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
    pipes: tuple[int, int, int],
    layer_root: Path,
    runtime_binary: str,
    runtime_options: tuple[str, ...],
    runtime_root: Path,
    hide_unified: bool,
) -> list[str]:
    """``pipes``: the child's descriptors of the report pipe (write), the task line's and the
    output line's (read)."""
    return [
        *tools.unshare,
        "--mount",
        "--propagation",
        "private",
        *tools.shell,
        "-c",
        SCRIPT,
        NAME,
        *(str(fd) for fd in pipes),
        str(container.path),
        str(layer_root),
        container.id,
        runtime_binary,
        " ".join(runtime_options),
        str(runtime_root),
        "1" if hide_unified else "0",
        tools.keep_first,
    ]
