from __future__ import annotations

import io
import random
import stat
import zipfile
from pathlib import Path

import pytest

from dockworker.errors import ClientError
from dockworker.runner.archive import ArchiveLimits, check_archive, extract_archive
from tests.helpers import make_zip

LIMITS = ArchiveLimits(max_bytes=1_000_000, max_unpacked_bytes=5_000_000, max_entries=50)


def _zip_with(entries: list[tuple[zipfile.ZipInfo, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for info, data in entries:
            archive.writestr(info, data)
    return buffer.getvalue()


def _symlink(name: str, target: str) -> tuple[zipfile.ZipInfo, bytes]:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info, target.encode()


def test_a_plain_archive_passes_and_extracts(tmp_path: Path) -> None:
    data = make_zip({"main.sh": "echo hi", "lib/util.py": "x = 1", "run": "#!/bin/sh"}, {"run": 0o755})
    check_archive(data, LIMITS)
    target = tmp_path / "code"
    extract_archive(data, target)
    assert (target / "main.sh").read_text() == "echo hi"
    assert (target / "lib" / "util.py").read_text() == "x = 1"
    assert (target / "run").stat().st_mode & 0o777 == 0o755
    assert (target / "main.sh").stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("name", ["../evil", "/etc/passwd", "a/../../evil", "C:/x", "a\\..\\b"])
def test_entries_escaping_the_root_are_refused(name: str) -> None:
    with pytest.raises(ClientError, match="escapes"):
        check_archive(make_zip({name: "x"}), LIMITS)


def test_links_out_of_the_root_are_refused() -> None:
    with pytest.raises(ClientError, match="links outside"):
        check_archive(_zip_with([_symlink("link", "/etc/shadow")]), LIMITS)
    with pytest.raises(ClientError, match="links outside"):
        check_archive(_zip_with([_symlink("dir/link", "../../x")]), LIMITS)


def test_links_inside_the_root_are_kept(tmp_path: Path) -> None:
    data = _zip_with([(zipfile.ZipInfo("real.txt"), b"content"), _symlink("alias.txt", "real.txt")])
    check_archive(data, LIMITS)
    extract_archive(data, tmp_path / "code")
    assert (tmp_path / "code" / "alias.txt").read_text() == "content"


def test_not_a_zip() -> None:
    with pytest.raises(ClientError, match="not a valid zip"):
        check_archive(b"this is not a zip", LIMITS)


def test_too_large_and_too_many_entries() -> None:
    with pytest.raises(ClientError, match="limit is 1000000"):
        check_archive(b"x" * 1_000_001, LIMITS)
    with pytest.raises(ClientError, match="entries"):
        check_archive(make_zip({f"f{i}": "x" for i in range(51)}), LIMITS)


def test_zip_bomb_ratio_and_total() -> None:
    bomb = make_zip({"zeros": b"\0" * 4_000_000})
    with pytest.raises(ClientError, match="compression ratio"):
        check_archive(bomb, LIMITS)
    noise = random.Random(1).randbytes(1_000_000)
    many = make_zip({f"f{i}": noise for i in range(6)})
    roomy = ArchiveLimits(max_bytes=10_000_000, max_unpacked_bytes=5_000_000, max_entries=50)
    with pytest.raises(ClientError, match="unpacks to"):
        check_archive(many, roomy)


def test_extraction_is_atomic_and_idempotent(tmp_path: Path) -> None:
    data = make_zip({"a": "1"})
    extract_archive(data, tmp_path / "code")
    extract_archive(data, tmp_path / "code")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["code"]
