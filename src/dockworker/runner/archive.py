"""Code archives: checked when uploaded, checked again and extracted once per revision into a
cache.

Extraction runs as root on the host, so it must not leave its root whatever the archive says.
Two layers make sure of it:

* the archive's *plan* (``plan_archive``) is checked before anything is written: every member
  path stays under the root, no member passes through a member that is a symbolic link, and
  every link's target, resolved the way the kernel would (following the archive's other links),
  stays under the root;
* the writes themselves never follow a link: directories and files are created first, relative
  to directory descriptors opened with ``O_NOFOLLOW``, files with ``O_EXCL``; links come last,
  so none exists while anything is written through a path.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import shutil
import stat
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from ..errors import ClientError

# How many links one target may pass through before it is called a loop (the kernel allows 40).
MAX_LINK_HOPS = 40
COPY_CHUNK = 1024 * 1024


@dataclass(frozen=True, kw_only=True)
class ArchiveLimits:
    max_bytes: int
    max_unpacked_bytes: int
    max_entries: int
    max_ratio: int = 200


# What extraction enforces when its caller gives no limits (the settings' defaults).
DEFAULT_LIMITS = ArchiveLimits(max_bytes=100 << 20, max_unpacked_bytes=512 << 20, max_entries=10_000)


@dataclass(frozen=True, kw_only=True)
class ArchivePlan:
    """An archive's members, sorted into what extraction creates, in the order it creates them."""

    directories: tuple[PurePosixPath, ...]
    files: tuple[tuple[PurePosixPath, zipfile.ZipInfo], ...]
    links: tuple[tuple[PurePosixPath, str], ...]


def _is_symlink(info: zipfile.ZipInfo) -> bool:
    return stat.S_ISLNK(info.external_attr >> 16)


def _safe_member_path(name: str) -> PurePosixPath:
    path = PurePosixPath(name)
    drive_like = bool(path.parts) and ":" in path.parts[0]
    if (
        not path.parts
        or path.is_absolute()
        or ".." in path.parts
        or "\\" in name
        or "\0" in name
        or drive_like
    ):
        raise ClientError(f"zip entry {name!r} escapes the archive root")
    return path


def _link_target(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> str:
    raw = archive.read(info)
    try:
        target = raw.decode()
    except UnicodeDecodeError as exc:
        raise ClientError(f"zip entry {info.filename!r} is a link with an unreadable target") from exc
    if not target or "\0" in target or len(target) > 4096:
        raise ClientError(f"zip entry {info.filename!r} is a link with an invalid target")
    return target


def link_escapes(link: PurePosixPath, target: str, links: dict[PurePosixPath, str]) -> bool:
    """Whether ``target`` of the link at ``link`` resolves outside the root, resolving it as
    the kernel would: component by component, ``..`` after any link it passes through, and the
    archive's other links followed. A loop counts as escaping."""
    if target.startswith("/"):
        return True
    resolved: list[str] = list(link.parent.parts)
    pending: list[str] = list(PurePosixPath(target).parts)
    hops = 0
    while pending:
        part = pending.pop(0)
        if part == "..":
            if not resolved:
                return True
            resolved.pop()
            continue
        resolved.append(part)
        through = links.get(PurePosixPath(*resolved))
        if through is None:
            continue
        hops += 1
        if hops > MAX_LINK_HOPS or through.startswith("/"):
            return True
        resolved.pop()
        pending = list(PurePosixPath(through).parts) + pending
    return False


def plan_archive(archive: zipfile.ZipFile, limits: ArchiveLimits) -> ArchivePlan:
    """Check an open archive against the limits and the rules above; returns what to create.
    Raises ClientError naming the first member that breaks a rule."""
    entries = archive.infolist()
    if len(entries) > limits.max_entries:
        raise ClientError(f"code archive has {len(entries)} entries; the limit is {limits.max_entries}")
    directories, files, links = _sort_members(archive, entries, limits)
    implied = _parent_directories([*directories, *files, *links], files, links)
    for path, target in links.items():
        if link_escapes(path, target, links):
            raise ClientError(f"zip entry {path.as_posix()!r} links outside the archive ({target})")
    every_directory = {**implied, **directories}
    return ArchivePlan(
        directories=tuple(sorted(every_directory, key=lambda p: (len(p.parts), p.parts))),
        files=tuple(sorted(files.items())),
        links=tuple(sorted(links.items())),
    )


def _sort_members(
    archive: zipfile.ZipFile, entries: list[zipfile.ZipInfo], limits: ArchiveLimits
) -> tuple[dict[PurePosixPath, None], dict[PurePosixPath, zipfile.ZipInfo], dict[PurePosixPath, str]]:
    """The members as directories, files and links (with their targets), each path once."""
    directories: dict[PurePosixPath, None] = {}
    files: dict[PurePosixPath, zipfile.ZipInfo] = {}
    links: dict[PurePosixPath, str] = {}
    total = 0
    for info in entries:
        path = _safe_member_path(info.filename)
        total += info.file_size
        if info.compress_size and info.file_size / info.compress_size > limits.max_ratio:
            raise ClientError(f"zip entry {info.filename!r} has a suspicious compression ratio")
        if info.is_dir():
            if path in files or path in links:
                raise ClientError(f"zip entry {info.filename!r} is both a directory and a file")
            directories[path] = None
            continue
        if path in files or path in links or path in directories:
            raise ClientError(f"zip entry {info.filename!r} appears twice")
        if _is_symlink(info):
            links[path] = _link_target(archive, info)
        else:
            files[path] = info
    if total > limits.max_unpacked_bytes:
        raise ClientError(f"code archive unpacks to {total} bytes; the limit is {limits.max_unpacked_bytes}")
    return directories, files, links


def _parent_directories(
    paths: list[PurePosixPath], files: dict[PurePosixPath, zipfile.ZipInfo], links: dict[PurePosixPath, str]
) -> dict[PurePosixPath, None]:
    """Every directory the members live in; none of them may be a link or a file."""
    implied: dict[PurePosixPath, None] = {}
    for path in paths:
        for parent in reversed(path.parents[:-1]):  # every proper prefix, shortest first
            kind = "link" if parent in links else "file" if parent in files else None
            if kind is not None:
                raise ClientError(
                    f"zip entry {path.as_posix()!r} is inside {parent.as_posix()!r}, which is a {kind}"
                )
            implied[parent] = None
    return implied


@contextlib.contextmanager
def _open_zip(data: bytes) -> Iterator[zipfile.ZipFile]:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError) as exc:
        raise ClientError(f"code archive is not a valid zip file: {exc}") from exc
    with archive:
        yield archive


def check_archive(data: bytes, limits: ArchiveLimits) -> None:
    """Reject archives that are not zips, too large, too many entries, zip bombs, entries that
    escape the root or pass through a link, or links that resolve outside it."""
    if len(data) > limits.max_bytes:
        raise ClientError(f"code archive is {len(data)} bytes; the limit is {limits.max_bytes}")
    with _open_zip(data) as archive:
        plan_archive(archive, limits)
        try:
            bad = archive.testzip()
        except (zipfile.BadZipFile, NotImplementedError, OSError, EOFError) as exc:
            raise ClientError(f"code archive is corrupt: {exc}") from exc
        if bad is not None:
            raise ClientError(f"zip entry {bad!r} is corrupt")


_DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class _Tree:
    """Creates entries under one root directory, never following a link: each path is walked
    from the root's descriptor one component at a time with ``O_NOFOLLOW``."""

    def __init__(self, root: Path) -> None:
        self._root_fd = os.open(root, _DIRECTORY_FLAGS)

    def close(self) -> None:
        os.close(self._root_fd)

    @contextlib.contextmanager
    def _parent(self, path: PurePosixPath) -> Iterator[int]:
        fd = os.dup(self._root_fd)
        try:
            for part in path.parent.parts:
                child = os.open(part, _DIRECTORY_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = child
            yield fd
        finally:
            os.close(fd)

    def make_directory(self, path: PurePosixPath) -> None:
        with self._parent(path) as parent:
            with contextlib.suppress(FileExistsError):
                os.mkdir(path.name, 0o700, dir_fd=parent)
            fd = os.open(path.name, _DIRECTORY_FLAGS, dir_fd=parent)
            try:
                os.fchmod(fd, 0o755)
            finally:
                os.close(fd)

    def write_file(self, path: PurePosixPath, source: IO[bytes], mode: int, budget: int) -> int:
        """Write ``source`` to a new file at ``path``; returns the bytes written. Raises
        ClientError when the file would take more than ``budget`` bytes."""
        written = 0
        with self._parent(path) as parent:
            fd = os.open(path.name, _FILE_FLAGS, 0o600, dir_fd=parent)
            with os.fdopen(fd, "wb") as sink:
                while chunk := source.read(COPY_CHUNK):
                    written += len(chunk)
                    if written > budget:
                        raise ClientError("code archive unpacks to more than its limit")
                    sink.write(chunk)
                os.fchmod(sink.fileno(), mode)
        return written

    def make_link(self, path: PurePosixPath, target: str) -> None:
        with self._parent(path) as parent:
            os.symlink(target, path.name, dir_fd=parent)


def extract_archive(data: bytes, destination: Path, limits: ArchiveLimits = DEFAULT_LIMITS) -> None:
    """Extract into ``destination`` atomically: a sibling temporary directory renamed into place.
    The archive is checked again first (the store's copy is not trusted more than an upload).
    Files are world-readable and directories world-listable, so the task's user can read them;
    nothing is writable by it."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".extract-", dir=destination.parent))
    try:
        with _open_zip(data) as archive:
            plan = plan_archive(archive, limits)
            tree = _Tree(staging)
            try:
                _write_plan(tree, archive, plan, limits)
            finally:
                tree.close()
        staging.chmod(0o755)
        try:
            staging.rename(destination)
        except OSError:
            if not destination.is_dir():  # another thread won the race: fine
                raise
    except OSError as exc:
        if isinstance(exc, (FileExistsError, NotADirectoryError)) or exc.errno == errno.ELOOP:
            raise ClientError(f"code archive cannot be extracted safely: {exc}") from exc
        raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _write_plan(tree: _Tree, archive: zipfile.ZipFile, plan: ArchivePlan, limits: ArchiveLimits) -> None:
    for directory in plan.directories:
        tree.make_directory(directory)
    left = limits.max_unpacked_bytes
    for path, info in plan.files:
        executable = (info.external_attr >> 16) & 0o111
        with archive.open(info) as source:
            left -= tree.write_file(path, source, 0o755 if executable else 0o644, left)
    for path, target in plan.links:
        tree.make_link(path, target)
