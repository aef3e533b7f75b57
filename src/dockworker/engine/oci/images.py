"""Images for the OCI backend: taken from the Docker engine (its image export, ``docker save``)
once per image id, each layer unpacked once per content digest into a local cache that overlay
mounts use as read-only lower layers.

The engine is asked only which image a reference names (at most once a second per reference, so
a rebuilt stack is picked up within a second); when it cannot be reached, the last answer it
gave is used, so cached images keep running without dockerd."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tarfile
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any, Protocol

from ...errors import EngineUnavailable, ImageMissing, InfrastructureError
from .layers import LayerError, member_path, unpack_layer

HEX_DIGEST_LEN = 64
REF_TTL_S = 1.0
_TMP_PREFIX = ".tmp-"


class ImageSource(Protocol):
    """What the image cache needs of the Docker engine."""

    def image_id(self, ref: str) -> str | None: ...

    def export_image(self, ref: str) -> Iterator[bytes]: ...


@dataclass(frozen=True, kw_only=True)
class ImageConfig:
    """The parts of an image's config a container's process is built from."""

    env: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    working_dir: str = ""
    user: str = ""

    @classmethod
    def from_docker(cls, config: dict[str, Any]) -> ImageConfig:
        return cls(
            env=tuple(config.get("Env") or ()),
            entrypoint=tuple(config.get("Entrypoint") or ()),
            cmd=tuple(config.get("Cmd") or ()),
            working_dir=str(config.get("WorkingDir") or ""),
            user=str(config.get("User") or ""),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "Env": list(self.env),
            "Entrypoint": list(self.entrypoint),
            "Cmd": list(self.cmd),
            "WorkingDir": self.working_dir,
            "User": self.user,
        }


@dataclass(frozen=True, kw_only=True)
class PreparedImage:
    id: str  # the engine's image id, sha256:<hex>
    config: ImageConfig
    layers: tuple[str, ...]  # diff ids (hex), bottom layer first
    layer_root: Path

    def layer_dirs(self) -> list[Path]:
        return [self.layer_root / digest for digest in self.layers]

    def read_file(self, path: str) -> bytes | None:
        """A file of the image's merged root filesystem (the top-most layer that has it, unless a
        layer above deleted it); None when there is none. Used for /etc/passwd and /etc/group."""
        relative = PurePosixPath(path.lstrip("/"))
        for layer in reversed(self.layer_dirs()):
            candidate = layer / relative
            try:
                info = candidate.lstat()
            except (FileNotFoundError, NotADirectoryError):
                continue
            if not candidate.is_file() or candidate.is_symlink() or info.st_size > 1 << 20:
                return None  # a whiteout, a link or something odd: treat as absent
            return candidate.read_bytes()
        return None


def _hex(digest: str) -> str:
    value = digest.removeprefix("sha256:")
    if len(value) != HEX_DIGEST_LEN or any(c not in "0123456789abcdef" for c in value):
        raise InfrastructureError(f"unexpected image digest {digest!r}")
    return value


class ImageCache:
    """Prepared images under ``root``: ``layers/<diff id>`` and ``images/<image id>.json``.
    Thread-safe; the layer directories are written once and never changed."""

    def __init__(self, root: Path, source: ImageSource) -> None:
        self._source = source
        self.layer_root = root / "layers"
        self._images = root / "images"
        self._spool = root / "spool"
        self._refs_file = root / "refs.json"
        for directory in (self.layer_root, self._images, self._spool):
            directory.mkdir(parents=True, exist_ok=True)
        os.chmod(root, 0o700)  # set-id files and the layers' contents are no business of host users
        self._lock = threading.Lock()
        self._image_locks: dict[str, threading.Lock] = {}
        self._prepared: dict[str, PreparedImage] = {}
        self._refs = self._load_refs()
        self._recent: dict[str, tuple[float, str]] = {}
        self._sweep_partial()

    def _load_refs(self) -> dict[str, str]:
        try:
            data = json.loads(self._refs_file.read_text())
        except (OSError, ValueError):
            return {}
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def _remember_ref(self, ref: str, image_id: str) -> None:
        with self._lock:
            if self._refs.get(ref) == image_id:
                return
            self._refs[ref] = image_id
            snapshot = dict(self._refs)
        _write_atomic(self._refs_file, json.dumps(snapshot, indent=1).encode())

    def _sweep_partial(self) -> None:
        """Remove what an interrupted import left (unpacked halves, spooled exports)."""
        root = self._images.parent
        leftovers = [
            e
            for d in (root, self.layer_root, self._images)
            for e in d.iterdir()
            if e.name.startswith(_TMP_PREFIX)
        ]
        for entry in [*leftovers, *self._spool.iterdir()]:
            with contextlib.suppress(OSError):
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()

    def resolve(self, ref: str) -> str | None:
        """The image id ``ref`` names: the engine's answer (asked at most once a second per
        reference, so a rebuilt image is picked up within that second), or its last answer
        when it cannot be reached."""
        now = time.monotonic()
        with self._lock:
            recent = self._recent.get(ref)
        if recent is not None and now - recent[0] < REF_TTL_S:
            return recent[1]
        try:
            image_id = self._source.image_id(ref)
        except EngineUnavailable:
            with self._lock:
                known = self._refs.get(ref)
            if known is None or not (self._images / f"{_hex(known)}.json").exists():
                raise
            return known
        if image_id is not None:
            self._remember_ref(ref, image_id)
            with self._lock:
                self._recent[ref] = (now, image_id)
        return image_id

    def prepare(self, ref: str) -> PreparedImage:
        image_id = self.resolve(ref)
        if image_id is None:
            raise ImageMissing(f"image not found on the engine: {ref}")
        with self._lock:
            prepared = self._prepared.get(image_id)
            image_lock = self._image_locks.setdefault(image_id, threading.Lock())
        if prepared is not None:
            return prepared
        with image_lock:
            prepared = self._load(image_id) or self._import(image_id)
        with self._lock:
            self._prepared[image_id] = prepared
        return prepared

    def _load(self, image_id: str) -> PreparedImage | None:
        try:
            data = json.loads((self._images / f"{_hex(image_id)}.json").read_text())
        except (OSError, ValueError):
            return None
        prepared = PreparedImage(
            id=image_id,
            config=ImageConfig.from_docker(data["config"]),
            layers=tuple(data["layers"]),
            layer_root=self.layer_root,
        )
        if not all(path.is_dir() for path in prepared.layer_dirs()):
            return None
        return prepared

    def _import(self, image_id: str) -> PreparedImage:
        lock_path = self._images / f"{_hex(image_id)}.lock"
        with open(lock_path, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # another process may import the same image
            prepared = self._load(image_id)
            if prepared is not None:
                return prepared
            with tempfile.TemporaryFile(dir=self._spool) as spooled:
                for chunk in self._source.export_image(image_id):
                    spooled.write(chunk)
                spooled.seek(0)
                prepared = self._unpack_export(image_id, spooled)
            record = {"config": prepared.config.to_json(), "layers": list(prepared.layers)}
            _write_atomic(self._images / f"{_hex(image_id)}.json", json.dumps(record, indent=1).encode())
            return prepared

    def _unpack_export(self, image_id: str, spooled: IO[bytes]) -> PreparedImage:
        try:
            with tarfile.open(fileobj=spooled, mode="r:") as export:
                manifest = json.loads(_read_member(export, "manifest.json"))
                if not isinstance(manifest, list) or len(manifest) != 1:
                    raise InfrastructureError(f"export image {image_id}: unexpected manifest")
                entry = manifest[0]
                config_json = json.loads(_read_member(export, str(entry["Config"])))
                diff_ids = [_hex(d) for d in config_json["rootfs"]["diff_ids"]]
                layer_members = [str(name) for name in entry["Layers"]]
                if len(diff_ids) != len(layer_members):
                    raise InfrastructureError(f"export image {image_id}: layers and diff ids disagree")
                for digest, member in zip(diff_ids, layer_members, strict=True):
                    if not (self.layer_root / digest).is_dir():
                        self._unpack_one(export, member, digest)
        except (tarfile.TarError, KeyError, TypeError, ValueError) as exc:
            raise InfrastructureError(f"export image {image_id}: unreadable export: {exc}") from exc
        return PreparedImage(
            id=image_id,
            config=ImageConfig.from_docker(config_json.get("config") or {}),
            layers=tuple(diff_ids),
            layer_root=self.layer_root,
        )

    def _unpack_one(self, export: tarfile.TarFile, member: str, digest: str) -> None:
        staging = self.layer_root / f"{_TMP_PREFIX}{uuid.uuid4().hex}"
        os.mkdir(staging, 0o755)
        os.chmod(staging, 0o755)
        try:
            handle = export.extractfile(member)
            if handle is None:
                raise InfrastructureError(f"image layer {member} is not a file in the export")
            with handle:
                got = unpack_layer(handle, str(staging))
            if got != digest:
                raise LayerError(f"image layer {member}: content digest {got} is not its diff id {digest}")
            try:
                os.rename(staging, self.layer_root / digest)
            except OSError:
                if not (self.layer_root / digest).is_dir():
                    raise
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)


def _read_member(export: tarfile.TarFile, name: str) -> bytes:
    path = member_path(name)
    handle = export.extractfile(str(path))
    if handle is None:
        raise InfrastructureError(f"image export member {name} is not a file")
    with handle:
        return handle.read()


def _write_atomic(path: Path, data: bytes) -> None:
    temporary = path.with_name(f"{_TMP_PREFIX}{path.name}.{uuid.uuid4().hex}")
    temporary.write_bytes(data)
    os.replace(temporary, path)
