"""Code archives: checked when uploaded, extracted once per revision into a cache."""

from __future__ import annotations

import io
import os
import shutil
import stat
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..errors import ClientError


@dataclass(frozen=True, kw_only=True)
class ArchiveLimits:
    max_bytes: int
    max_unpacked_bytes: int
    max_entries: int
    max_ratio: int = 200


def _is_symlink(info: zipfile.ZipInfo) -> bool:
    return stat.S_ISLNK(info.external_attr >> 16)


def _safe_member_path(name: str) -> PurePosixPath:
    path = PurePosixPath(name)
    drive_like = bool(path.parts) and ":" in path.parts[0]
    if not path.parts or path.is_absolute() or ".." in path.parts or "\\" in name or drive_like:
        raise ClientError(f"zip entry {name!r} escapes the archive root")
    return path


def check_archive(data: bytes, limits: ArchiveLimits) -> None:
    """Reject archives that are not zips, too large, too many entries, zip bombs, entries that
    escape the root, or links that point outside it."""
    if len(data) > limits.max_bytes:
        raise ClientError(f"code archive is {len(data)} bytes; the limit is {limits.max_bytes}")
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        raise ClientError(f"code archive is not a valid zip file: {exc}") from exc
    with archive:
        entries = archive.infolist()
        if len(entries) > limits.max_entries:
            raise ClientError(f"code archive has {len(entries)} entries; the limit is {limits.max_entries}")
        total = 0
        for info in entries:
            _safe_member_path(info.filename)
            total += info.file_size
            if info.compress_size and info.file_size / info.compress_size > limits.max_ratio:
                raise ClientError(f"zip entry {info.filename!r} has a suspicious compression ratio")
            if _is_symlink(info):
                target = archive.read(info).decode(errors="replace")
                resolved = PurePosixPath(info.filename).parent / target
                if target.startswith("/") or ".." in PurePosixPath(os.path.normpath(resolved)).parts:
                    raise ClientError(f"zip entry {info.filename!r} links outside the archive ({target})")
        if total > limits.max_unpacked_bytes:
            raise ClientError(
                f"code archive unpacks to {total} bytes; the limit is {limits.max_unpacked_bytes}"
            )
        bad = archive.testzip()
        if bad is not None:
            raise ClientError(f"zip entry {bad!r} is corrupt")


def extract_archive(data: bytes, destination: Path) -> None:
    """Extract into ``destination`` atomically: a sibling temporary directory renamed into place.
    Files are world-readable and directories world-listable, so the task's user can read them;
    nothing is writable by it."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".extract-", dir=destination.parent))
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            for info in archive.infolist():
                relative = _safe_member_path(info.filename)
                target = staging / relative
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                if _is_symlink(info):
                    os.symlink(archive.read(info).decode(), target)
                    continue
                with archive.open(info) as source, open(target, "wb") as sink:
                    shutil.copyfileobj(source, sink)
                executable = (info.external_attr >> 16) & 0o111
                target.chmod(0o755 if executable else 0o644)
        for root, dirs, _files in os.walk(staging):
            for name in dirs:
                Path(root, name).chmod(0o755)
        staging.chmod(0o755)
        try:
            staging.rename(destination)
        except OSError:
            if not destination.is_dir():  # another thread won the race: fine
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
