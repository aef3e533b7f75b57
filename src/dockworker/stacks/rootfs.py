"""Root filesystem helpers shared by the stack builders: scratch directories that never
outlive a build, rootfs tarballs, and the task user's account."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from ..errors import InfrastructureError
from .commands import run_command

WORKER_NAME = "worker"
WORKER_HOME = "/tmp"
WORKER_SHELL = "/bin/sh"
HOSTS_FILE = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
# Where the task's code and payload are bind-mounted; they must exist in a read-only rootfs.
MOUNT_POINTS = ("mnt/code", "mnt/task")


# --- scratch directories -------------------------------------------------------------------


@contextlib.contextmanager
def scratch_dir(parent: Path, prefix: str) -> Iterator[Path]:
    """A temporary directory under parent, removed on the way out whatever happened. Anything
    still mounted below it (a chroot's /proc, debootstrap's leftovers after a failure) is
    unmounted first, so the removal never descends into a live filesystem."""
    parent.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        yield path
    finally:
        unmount_all_below(path)
        shutil.rmtree(path)


def mounts_below(path: Path) -> list[Path]:
    """The mount points at or below path, deepest first."""
    root = os.path.realpath(path)
    found: list[Path] = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as mountinfo:
        for line in mountinfo:
            mount_point = _unescape_mountinfo(line.split()[4])
            if mount_point == root or mount_point.startswith(root + "/"):
                found.append(Path(mount_point))
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def _unescape_mountinfo(field: str) -> str:
    # The kernel writes spaces, tabs, newlines and backslashes in paths as \ooo octal escapes.
    return re.sub(r"\\([0-7]{3})", lambda match: chr(int(match.group(1), 8)), field)


def unmount_all_below(path: Path) -> None:
    for mount_point in mounts_below(path):
        unmount(mount_point)


def unmount(mount_point: Path) -> None:
    try:
        run_command(["umount", str(mount_point)])
    except InfrastructureError:
        # Busy (a process left running in the chroot): detach it now, the kernel finishes later.
        run_command(["umount", "--lazy", str(mount_point)])


@contextlib.contextmanager
def mounted_proc(root: Path) -> Iterator[None]:
    """/proc mounted in the rootfs, as package maintainer scripts expect in a chroot."""
    target = root / "proc"
    target.mkdir(exist_ok=True)
    run_command(["mount", "-t", "proc", "proc", str(target)])
    try:
        yield
    finally:
        unmount(target)


# --- tarballs ------------------------------------------------------------------------------


def write_rootfs_tar(root: Path, out: IO[bytes]) -> None:
    """Tar the tree at root with numeric owners, hard links kept, and device nodes, fifos and
    sockets left out (the engine provides /dev)."""
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in sorted(root.iterdir()):
            tar.add(entry, arcname=entry.name, filter=_plain_files_only)


def _plain_files_only(member: tarfile.TarInfo) -> tarfile.TarInfo | None:
    if member.ischr() or member.isblk() or member.isfifo():
        return None
    member.uname = member.gname = ""
    return member


def extract_rootfs_tar(tarball: Path, root: Path) -> None:
    """Unpack a tarball made by write_rootfs_tar, keeping numeric owners and all mode bits."""
    root.mkdir(parents=True, exist_ok=True)
    run_command(
        ["tar", "--extract", "--numeric-owner", "--same-permissions", "-f", str(tarball), "-C", str(root)]
    )


# --- accounts ------------------------------------------------------------------------------


def passwd_line(name: str, uid: int, gid: int, home: str, shell: str = WORKER_SHELL) -> str:
    return f"{name}:x:{uid}:{gid}:{name}:{home}:{shell}\n"


def group_line(name: str, gid: int) -> str:
    return f"{name}:x:{gid}:\n"


def add_worker_account(root: Path, uid: int, gid: int) -> None:
    """Add the task user to the rootfs's account databases, unless its name or ids are taken."""
    etc = root / "etc"
    if not _entry_exists(etc / "group", WORKER_NAME, gid):
        _append(etc / "group", group_line(WORKER_NAME, gid))
        _append_if_exists(etc / "gshadow", f"{WORKER_NAME}:!::\n")
    if not _entry_exists(etc / "passwd", WORKER_NAME, uid):
        _append(etc / "passwd", passwd_line(WORKER_NAME, uid, gid, WORKER_HOME))
        _append_if_exists(etc / "shadow", f"{WORKER_NAME}:*:::::::\n")


def _entry_exists(database: Path, name: str, numeric_id: int) -> bool:
    for line in database.read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name or (len(fields) > 2 and fields[2] == str(numeric_id)):
            return True
    return False


def _append(path: Path, text: str) -> None:
    existing = path.read_text()
    if existing and not existing.endswith("\n"):
        text = "\n" + text
    with path.open("a") as file:
        file.write(text)


def _append_if_exists(path: Path, text: str) -> None:
    if path.exists():
        _append(path, text)


def create_mount_points(root: Path) -> None:
    for mount_point in MOUNT_POINTS:
        (root / mount_point).mkdir(parents=True, exist_ok=True)
        (root / mount_point).chmod(0o755)
