"""One image layer (a tar, as ``docker save`` exports it) unpacked into a directory that an
overlay mount can use as a lower layer.

The unpacking runs as root over content that came from an image, so it never leaves its
directory whatever the tar says: member names are checked before anything is written (relative,
no ``..``), every directory on the way is opened relative to its parent's descriptor with
``O_NOFOLLOW`` (a member under a member that is a link fails instead of writing through it),
files are created with ``O_EXCL``, hard links must point at a regular file of the same layer,
and nothing is ever written through a link.

Docker's whiteouts become overlayfs ones: ``.wh.NAME`` a 0/0 character device named NAME,
``.wh..wh..opq`` the ``trusted.overlay.opaque`` attribute of its directory. Device nodes are not
created (``/dev`` is a fresh tmpfs in every container anyway, and the devices cgroup would refuse
them), nor are extended attributes (file capabilities cannot work under an empty bounding set).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import tarfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import IO

from ...errors import InfrastructureError

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"
COPY_CHUNK = 1024 * 1024
# Directory descriptors kept open while unpacking (members usually come directory by directory).
DIR_FD_CACHE = 64
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class LayerError(InfrastructureError):
    """An image layer cannot be unpacked safely."""


class HashingReader:
    """A read-only file object that hashes what passes through it."""

    def __init__(self, source: IO[bytes]) -> None:
        self._source = source
        self.sha256 = hashlib.sha256()
        self.size = 0

    def read(self, size: int = -1) -> bytes:
        data = self._source.read(size)
        self.sha256.update(data)
        self.size += len(data)
        return data

    def drain(self) -> None:
        while self.read(COPY_CHUNK):
            pass


def member_path(name: str) -> PurePosixPath | None:
    """The member's path inside the layer, None for the layer's root itself; LayerError when
    the name could leave the layer."""
    cleaned = name.removeprefix("./").rstrip("/")
    if cleaned in ("", "."):
        return None
    path = PurePosixPath(cleaned)
    if path.is_absolute() or ".." in path.parts or "\0" in name:
        raise LayerError(f"image layer member {name!r} escapes the layer")
    return path


@dataclass
class _DirMeta:
    mode: int
    uid: int
    gid: int
    mtime: float


def _dir_meta(member: tarfile.TarInfo) -> _DirMeta:
    return _DirMeta(stat.S_IMODE(member.mode), member.uid, member.gid, member.mtime)


class _Tree:
    """Directory descriptors under the layer's root, opened without following links."""

    def __init__(self, root: str) -> None:
        self.root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        self._cache: OrderedDict[PurePosixPath, int] = OrderedDict()

    def close(self) -> None:
        for fd in self._cache.values():
            os.close(fd)
        self._cache.clear()
        os.close(self.root_fd)

    def directory(self, path: PurePosixPath, *, create: bool) -> int:
        """The descriptor of directory ``path`` (relative to the root; ``.`` is the root)."""
        if path == PurePosixPath("."):
            return self.root_fd
        cached = self._cache.get(path)
        if cached is not None:
            self._cache.move_to_end(path)
            return cached
        parent = self.directory(path.parent, create=create)
        try:
            fd = os.open(
                path.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent
            )
        except FileNotFoundError:
            if not create:
                raise
            os.mkdir(path.name, 0o755, dir_fd=parent)
            fd = os.open(
                path.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent
            )
        except OSError as exc:  # ELOOP/ENOTDIR: a link or a file where a directory should be
            raise LayerError(f"image layer path {path} passes through a non-directory") from exc
        self._cache[path] = fd
        if len(self._cache) > DIR_FD_CACHE:
            _, oldest = self._cache.popitem(last=False)
            os.close(oldest)
        return fd

    def open_uncached(self, path: PurePosixPath) -> int:
        """A new descriptor of the existing directory ``path``, walked from the root without the
        cache (so no cached descriptor is closed meanwhile); the caller closes it."""
        fd = os.dup(self.root_fd)
        try:
            for part in path.parts:
                child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                os.close(fd)
                fd = child
        except OSError as exc:
            os.close(fd)
            raise LayerError(f"image layer path {path} is not a directory of the layer") from exc
        return fd

    def forget(self, path: PurePosixPath) -> None:
        """Drop cached descriptors at or under ``path`` (it is being replaced)."""
        for cached in [p for p in self._cache if p == path or path in p.parents]:
            os.close(self._cache.pop(cached))


def _clear(tree: _Tree, parent_fd: int, path: PurePosixPath) -> bool:
    """Remove what an earlier member put at ``path`` (a later member replaces it, as tar does).
    True when that was a directory."""
    try:
        info = os.stat(path.name, dir_fd=parent_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    if stat.S_ISDIR(info.st_mode):
        tree.forget(path)
        _remove_tree(parent_fd, path.name)
        return True
    os.unlink(path.name, dir_fd=parent_fd)
    return False


def _remove_tree(parent_fd: int, name: str) -> None:
    fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd)
    try:
        for entry in os.listdir(fd):
            info = os.stat(entry, dir_fd=fd, follow_symlinks=False)
            if stat.S_ISDIR(info.st_mode):
                _remove_tree(fd, entry)
            else:
                os.unlink(entry, dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=parent_fd)


def _write_file(fd_dir: int, name: str, source: IO[bytes], member: tarfile.TarInfo) -> None:
    fd = os.open(
        name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=fd_dir
    )
    try:
        remaining = member.size
        while remaining:
            chunk = source.read(min(COPY_CHUNK, remaining))
            if not chunk:
                raise LayerError(f"image layer member {member.name!r} is truncated")
            os.write(fd, chunk)
            remaining -= len(chunk)
        # chown first: it clears the set-id bits that chmod then sets
        os.fchown(fd, member.uid, member.gid)
        os.fchmod(fd, stat.S_IMODE(member.mode))
        os.utime(fd, (member.mtime, member.mtime))
    finally:
        os.close(fd)


def _set_owner_and_time(fd_dir: int, name: str, member: tarfile.TarInfo) -> None:
    os.chown(name, member.uid, member.gid, dir_fd=fd_dir, follow_symlinks=False)
    with contextlib.suppress(NotImplementedError):
        os.utime(name, (member.mtime, member.mtime), dir_fd=fd_dir, follow_symlinks=False)


def unpack_layer(source: IO[bytes], destination: str) -> str:
    """Unpack the layer tar read from ``source`` into the empty directory ``destination``.
    Returns the sha256 (hex) of the tar's bytes, i.e. the layer's diff id."""
    reader = HashingReader(source)
    tree = _Tree(destination)
    directories: dict[PurePosixPath, _DirMeta] = {}
    try:
        with tarfile.open(fileobj=reader, mode="r|") as archive:  # type: ignore[call-overload]
            for member in archive:
                _unpack_member(archive, tree, member, directories)
        reader.drain()  # the tar's end padding counts in the digest
        for path, meta in sorted(directories.items(), key=lambda item: -len(item[0].parts)):
            fd = tree.directory(path, create=False)
            os.fchown(fd, meta.uid, meta.gid)
            os.fchmod(fd, meta.mode)
            os.utime(fd, (meta.mtime, meta.mtime))
    except tarfile.TarError as exc:
        raise LayerError(f"image layer is not a valid tar: {exc}") from exc
    finally:
        tree.close()
    return reader.sha256.hexdigest()


def _unpack_member(
    archive: tarfile.TarFile,
    tree: _Tree,
    member: tarfile.TarInfo,
    directories: dict[PurePosixPath, _DirMeta],
) -> None:
    path = member_path(member.name)
    if path is None:
        if member.isdir():
            directories[PurePosixPath(".")] = _dir_meta(member)
        return
    parent_fd = tree.directory(path.parent, create=True)
    if path.name.startswith(WHITEOUT_PREFIX):
        _whiteout(tree, parent_fd, path, member, directories)
    elif member.isdir():
        _directory(tree, parent_fd, path)
        directories[path] = _dir_meta(member)
    else:
        if _clear(tree, parent_fd, path):
            _forget_directories(directories, path)
        _non_directory(archive, tree, parent_fd, path.name, member)


def _whiteout(
    tree: _Tree,
    parent_fd: int,
    path: PurePosixPath,
    member: tarfile.TarInfo,
    directories: dict[PurePosixPath, _DirMeta],
) -> None:
    if path.name == OPAQUE_MARKER:
        os.setxattr(parent_fd, OPAQUE_XATTR, b"y")
        return
    hidden_name = path.name.removeprefix(WHITEOUT_PREFIX)
    if hidden_name in ("", ".", ".."):
        raise LayerError(f"image layer member {member.name!r} is not a valid whiteout")
    hidden = path.parent / hidden_name
    if _clear(tree, parent_fd, hidden):
        _forget_directories(directories, hidden)
    os.mknod(hidden.name, stat.S_IFCHR | 0o600, os.makedev(0, 0), dir_fd=parent_fd)


def _directory(tree: _Tree, parent_fd: int, path: PurePosixPath) -> None:
    try:
        info = os.stat(path.name, dir_fd=parent_fd, follow_symlinks=False)
    except FileNotFoundError:
        os.mkdir(path.name, 0o755, dir_fd=parent_fd)
        return
    if not stat.S_ISDIR(info.st_mode):
        _clear(tree, parent_fd, path)
        os.mkdir(path.name, 0o755, dir_fd=parent_fd)


def _non_directory(
    archive: tarfile.TarFile, tree: _Tree, parent_fd: int, name: str, member: tarfile.TarInfo
) -> None:
    if member.isreg():
        data = archive.extractfile(member)
        if data is None:
            raise LayerError(f"image layer member {member.name!r} has no content")
        _write_file(parent_fd, name, data, member)
    elif member.issym():
        os.symlink(member.linkname, name, dir_fd=parent_fd)
        _set_owner_and_time(parent_fd, name, member)
    elif member.islnk():
        _hard_link(tree, parent_fd, name, member)
    elif member.isfifo():
        os.mkfifo(name, stat.S_IMODE(member.mode), dir_fd=parent_fd)
        _set_owner_and_time(parent_fd, name, member)
    # character and block devices are left out (see the module's docstring)


def _forget_directories(directories: dict[PurePosixPath, _DirMeta], path: PurePosixPath) -> None:
    """A replaced directory's metadata (and its subdirectories') is not applied at the end."""
    for known in [d for d in directories if d == path or path in d.parents]:
        del directories[known]


def _hard_link(tree: _Tree, parent_fd: int, name: str, member: tarfile.TarInfo) -> None:
    target = member_path(member.linkname)
    if target is None:
        raise LayerError(f"image layer member {member.name!r} links to the layer's root")
    target_parent = tree.open_uncached(target.parent)
    try:
        try:
            info = os.stat(target.name, dir_fd=target_parent, follow_symlinks=False)
        except FileNotFoundError as exc:
            raise LayerError(
                f"image layer member {member.name!r} links to {member.linkname!r}, not in the layer"
            ) from exc
        if not stat.S_ISREG(info.st_mode):
            raise LayerError(f"image layer member {member.name!r} links to {member.linkname!r}, not a file")
        os.link(target.name, name, src_dir_fd=target_parent, dst_dir_fd=parent_fd, follow_symlinks=False)
    finally:
        os.close(target_parent)
