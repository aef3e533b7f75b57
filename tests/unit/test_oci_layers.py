"""Unpacking an image layer: Docker's whiteouts become overlayfs ones, ownership, modes and
links are kept, and no member can write outside the layer's directory (it runs as root)."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from dockworker.engine.oci.layers import LayerError, member_path, unpack_layer
from tests.conftest import require


@pytest.fixture(autouse=True)
def as_root() -> None:
    require(os.geteuid() == 0, "unpacking layers (owners, whiteout devices, trusted xattrs) needs root")


def layer(*members: tuple[str, str, bytes | str]) -> bytes:
    """A tar of (name, kind, content-or-link-target) members; kind is f, d, l (symlink), h
    (hard link), c (character device), p (fifo)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, kind, content in members:
            info = tarfile.TarInfo(name)
            info.uid = info.gid = 1000
            info.mtime = 1_700_000_000
            data = content.encode() if isinstance(content, str) else content
            if kind == "f":
                info.size, info.mode = len(data), 0o4755 if name.endswith("suid") else 0o644
                archive.addfile(info, io.BytesIO(data))
                continue
            info.type, info.mode = {
                "d": (tarfile.DIRTYPE, 0o750),
                "l": (tarfile.SYMTYPE, 0o777),
                "h": (tarfile.LNKTYPE, 0o644),
                "c": (tarfile.CHRTYPE, 0o666),
                "p": (tarfile.FIFOTYPE, 0o600),
            }[kind]
            if kind in "lh":
                info.linkname = data.decode()
            archive.addfile(info)
    return buffer.getvalue()


def unpack(tmp_path: Path, data: bytes) -> tuple[Path, str]:
    destination = tmp_path / "layer"
    destination.mkdir()
    return destination, unpack_layer(io.BytesIO(data), str(destination))


def test_files_dirs_links_keep_their_owner_mode_and_time(tmp_path: Path) -> None:
    data = layer(
        ("./", "d", ""),
        ("etc/", "d", ""),
        ("etc/motd", "f", "hello"),
        ("bin/suid", "f", "x"),
        ("etc/link", "l", "motd"),
        ("etc/hard", "h", "etc/motd"),
        ("run/fifo", "p", ""),
    )
    root, digest = unpack(tmp_path, data)
    assert digest == hashlib.sha256(data).hexdigest()
    motd = root / "etc" / "motd"
    assert motd.read_text() == "hello"
    info = motd.stat()
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode), info.st_mtime) == (
        1000,
        1000,
        0o644,
        1_700_000_000,
    )
    assert stat.S_IMODE((root / "bin" / "suid").stat().st_mode) == 0o4755  # set-id kept after chown
    assert stat.S_IMODE((root / "etc").stat().st_mode) == 0o750
    assert os.readlink(root / "etc" / "link") == "motd"
    assert (root / "etc" / "hard").stat().st_ino == info.st_ino
    assert stat.S_ISFIFO((root / "run" / "fifo").lstat().st_mode)


def test_whiteouts_become_overlay_whiteouts_and_opaque_directories(tmp_path: Path) -> None:
    root, _ = unpack(
        tmp_path,
        layer(
            ("data/", "d", ""),
            ("data/.wh.gone", "f", ""),
            ("data/opaque/", "d", ""),
            ("data/opaque/.wh..wh..opq", "f", ""),
        ),
    )
    gone = (root / "data" / "gone").lstat()
    assert stat.S_ISCHR(gone.st_mode) and gone.st_rdev == os.makedev(0, 0)
    assert os.getxattr(root / "data" / "opaque", "trusted.overlay.opaque") == b"y"
    assert sorted(p.name for p in (root / "data" / "opaque").iterdir()) == []


def test_device_nodes_are_left_out(tmp_path: Path) -> None:
    root, _ = unpack(tmp_path, layer(("dev/", "d", ""), ("dev/sda", "c", "")))
    assert list((root / "dev").iterdir()) == []


def test_a_later_member_replaces_an_earlier_one(tmp_path: Path) -> None:
    root, _ = unpack(
        tmp_path,
        layer(("a", "f", "one"), ("a", "f", "two"), ("d/", "d", ""), ("d/x", "f", "x"), ("d", "f", "file")),
    )
    assert (root / "a").read_text() == "two"
    assert (root / "d").read_text() == "file"


@pytest.mark.parametrize(
    "members",
    [
        (("../escape", "f", "x"),),
        (("/etc/escape", "f", "x"),),
        (("a/../../escape", "f", "x"),),
        (("link", "l", "/tmp"), ("link/escape", "f", "x")),  # writing through a link
        (("dir/", "d", ""), ("dir/link", "l", "../.."), ("dir/link/escape", "f", "x")),
        (("hard", "h", "../outside"),),
        (("hard", "h", "not-in-the-layer"),),
        (("sub/", "d", ""), ("hard", "h", "sub")),  # a hard link to a directory
        (("d/", "d", ""), ("d/.wh..", "f", "")),  # a whiteout of the parent
    ],
)
def test_nothing_is_written_outside_the_layer(
    tmp_path: Path, members: tuple[tuple[str, str, str], ...]
) -> None:
    outside = tmp_path / "outside"
    outside.write_text("keep")
    with pytest.raises(LayerError):
        unpack(tmp_path, layer(*members))
    assert outside.read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["layer", "outside"]
    assert not Path("/tmp/escape").exists() and not Path("/etc/escape").exists()


def test_member_paths() -> None:
    assert member_path("./") is None and member_path(".") is None
    assert str(member_path("./usr/bin/")) == "usr/bin"
    assert str(member_path("a/./b")) == "a/b"
    for bad in ("..", "../x", "/x", "a/../b", "a\0b"):
        with pytest.raises(LayerError):
            member_path(bad)


def test_a_truncated_layer_is_refused(tmp_path: Path) -> None:
    data = layer(("big", "f", "x" * 100_000))
    with pytest.raises(LayerError):
        unpack(tmp_path, data[:20_000])
