"""The busybox stack's rootfs, made without any download from the host's statically linked
busybox (Debian package busybox-static): the binary, a symlink per applet, and a minimal /etc."""

from __future__ import annotations

import io
import struct
import tarfile
from pathlib import Path, PurePosixPath
from typing import IO

from ..errors import InfrastructureError
from .commands import command_output
from .rootfs import HOSTS_FILE, MOUNT_POINTS, WORKER_HOME, WORKER_NAME, group_line, passwd_line

HOST_BUSYBOX = Path("/bin/busybox")
BUSYBOX_IN_IMAGE = "bin/busybox"
INSTALL_HINT = "install the Debian package busybox-static"

_ELF_MAGIC = b"\x7fELF"
_ELF_TYPES_EXECUTABLE = (2, 3)  # ET_EXEC, ET_DYN (static-pie)
_PT_INTERP = 3

_DIRECTORIES: dict[str, int] = {
    "bin": 0o755,
    "dev": 0o755,
    "etc": 0o755,
    "mnt": 0o755,
    "proc": 0o555,
    "root": 0o700,
    "sbin": 0o755,
    "sys": 0o555,
    "tmp": 0o1777,
    "usr": 0o755,
    "usr/bin": 0o755,
    "usr/sbin": 0o755,
    "var": 0o755,
    "var/tmp": 0o1777,
    **dict.fromkeys(MOUNT_POINTS, 0o755),
}


def static_elf_problem(path: Path) -> str | None:
    """Why path is not a statically linked ELF executable, or None when it is one."""
    with path.open("rb") as file:
        ident = file.read(16)
        if len(ident) < 16 or ident[:4] != _ELF_MAGIC or ident[4] not in (1, 2) or ident[5] not in (1, 2):
            return "not an ELF file"
        endian = "<" if ident[5] == 1 else ">"
        is_64_bit = ident[4] == 2
        header_format = endian + ("HHIQQQIHHH" if is_64_bit else "HHIIIIIHHH")
        header = file.read(struct.calcsize(header_format))
        if len(header) < struct.calcsize(header_format):
            return "a truncated ELF file"
        elf_type, *_, program_headers_offset, _, _, _, entry_size, entry_count = struct.unpack(
            header_format, header
        )
        if elf_type not in _ELF_TYPES_EXECUTABLE:
            return "not an ELF executable"
        for index in range(entry_count):
            file.seek(program_headers_offset + index * entry_size)
            segment_type = file.read(4)
            if len(segment_type) < 4:
                return "a truncated ELF file"
            if struct.unpack(endian + "I", segment_type)[0] == _PT_INTERP:
                return "dynamically linked (it names an ELF interpreter)"
    return None


def check_host_busybox(busybox: Path) -> None:
    if not busybox.is_file():
        raise InfrastructureError(
            f"the busybox stack is built from {busybox}, which is missing: {INSTALL_HINT}"
        )
    problem = static_elf_problem(busybox)
    if problem is not None:
        raise InfrastructureError(
            f"{busybox} is {problem}; the busybox stack needs a statically linked busybox: {INSTALL_HINT}"
        )


def busybox_applets(busybox: Path) -> list[str]:
    """The applets' install paths relative to /, e.g. "bin/sh", "usr/bin/env"."""
    applets = []
    for line in command_output([str(busybox), "--list-full"]):
        path = PurePosixPath(line.strip())
        # "linuxrc" (an init applet living at /) has no place in a container.
        if len(path.parts) < 2 or path.is_absolute() or ".." in path.parts:
            continue
        if str(path) != BUSYBOX_IN_IMAGE:
            applets.append(str(path))
    if not applets:
        raise InfrastructureError(f"{busybox} --list-full listed no applets")
    return applets


def write_busybox_rootfs(out: IO[bytes], *, busybox: Path, uid: int, gid: int) -> None:
    check_host_busybox(busybox)
    applets = busybox_applets(busybox)
    mtime = int(busybox.stat().st_mtime)
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for directory, mode in sorted(_directories_for(applets).items()):
            tar.addfile(_member(directory, tarfile.DIRTYPE, mode, mtime))
        binary = busybox.read_bytes()
        tar.addfile(
            _member(BUSYBOX_IN_IMAGE, tarfile.REGTYPE, 0o755, mtime, size=len(binary)), io.BytesIO(binary)
        )
        for applet in sorted(applets):
            link = _member(applet, tarfile.SYMTYPE, 0o777, mtime)
            link.linkname = "/" + BUSYBOX_IN_IMAGE
            tar.addfile(link)
        for name, text in _etc_files(uid, gid).items():
            data = text.encode()
            tar.addfile(_member(name, tarfile.REGTYPE, 0o644, mtime, size=len(data)), io.BytesIO(data))


def _directories_for(applets: list[str]) -> dict[str, int]:
    directories = dict(_DIRECTORIES)
    for applet in applets:
        for parent in PurePosixPath(applet).parents:
            if str(parent) != ".":
                directories.setdefault(str(parent), 0o755)
    return directories


def _etc_files(uid: int, gid: int) -> dict[str, str]:
    return {
        "etc/passwd": passwd_line("root", 0, 0, "/root") + passwd_line(WORKER_NAME, uid, gid, WORKER_HOME),
        "etc/group": group_line("root", 0) + group_line(WORKER_NAME, gid),
        "etc/hosts": HOSTS_FILE,
    }


def _member(name: str, kind: bytes, mode: int, mtime: int, *, size: int = 0) -> tarfile.TarInfo:
    member = tarfile.TarInfo(name)
    member.type = kind
    member.mode = mode
    member.mtime = mtime
    member.size = size
    member.uid = member.gid = 0
    return member
