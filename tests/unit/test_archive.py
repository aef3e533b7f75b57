from __future__ import annotations

import io
import os
import random
import stat
import warnings
import zipfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dockworker.errors import ClientError
from dockworker.runner.archive import ArchiveLimits, check_archive, extract_archive
from tests.helpers import make_zip

LIMITS = ArchiveLimits(max_bytes=1_000_000, max_unpacked_bytes=5_000_000, max_entries=50)


def _zip_with(entries: list[tuple[zipfile.ZipInfo, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        warnings.simplefilter("ignore")  # some tests want duplicate names, which zipfile warns about
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


def _link_chain_escape() -> bytes:
    """The chain from the security report: each link looks inside when read as text."""
    return _zip_with(
        [
            _symlink("e", "."),
            _symlink("d", "e/.."),
            _symlink("d/g", ".."),
            (zipfile.ZipInfo("d/g/PWNED-by-zip.txt"), b"x"),
        ]
    )


def _tree(root: Path) -> set[str]:
    """Every path under root, links not followed."""
    found = set()
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            found.add(str(Path(directory, name).relative_to(root)))
    return found


def test_a_chain_of_links_climbing_out_is_refused_at_upload_and_at_extraction(tmp_path: Path) -> None:
    data = _link_chain_escape()
    with pytest.raises(ClientError, match="link"):
        check_archive(data, LIMITS)
    cache = tmp_path / "data" / "code-cache"
    cache.mkdir(parents=True)
    before = _tree(tmp_path)
    with pytest.raises(ClientError, match="link"):
        extract_archive(data, cache / "digest")  # a stored archive is checked again
    assert _tree(tmp_path) == before
    assert not (tmp_path / "data" / "PWNED-by-zip.txt").exists()


def test_a_link_whose_target_climbs_through_another_link_is_refused() -> None:
    data = _zip_with([_symlink("e", "."), _symlink("d", "e/..")])
    with pytest.raises(ClientError, match="'d' links outside"):
        check_archive(data, LIMITS)


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([_symlink("d", "sub"), (zipfile.ZipInfo("d/file"), b"x")], "inside 'd', which is a link"),
        ([(zipfile.ZipInfo("f"), b"x"), (zipfile.ZipInfo("f/g"), b"y")], "inside 'f', which is a file"),
        ([(zipfile.ZipInfo("f"), b"x"), (zipfile.ZipInfo("f"), b"y")], "appears twice"),
        ([_symlink("f", "a"), (zipfile.ZipInfo("f"), b"y")], "appears twice"),
        ([_symlink("loop", "loop/x")], "links outside"),
        ([_symlink("a", "b"), _symlink("b", "a/..")], "links outside"),
        ([_symlink("empty", "")], "invalid target"),
    ],
)
def test_layouts_that_extraction_could_not_honour_are_refused(
    entries: list[tuple[zipfile.ZipInfo, bytes]], message: str, tmp_path: Path
) -> None:
    data = _zip_with(entries)
    with pytest.raises(ClientError, match=message):
        check_archive(data, LIMITS)
    with pytest.raises(ClientError, match=message):
        extract_archive(data, tmp_path / "code")
    assert list(tmp_path.iterdir()) == []


def test_relative_links_that_stay_inside_are_kept(tmp_path: Path) -> None:
    data = _zip_with(
        [
            (zipfile.ZipInfo("node_modules/pkg/bin/tool.js"), b"console.log(1)"),
            _symlink("node_modules/.bin/tool", "../pkg/bin/tool.js"),
            _symlink("lib", "node_modules/pkg"),
            _symlink("tool", "lib/bin/../bin/tool.js"),
        ]
    )
    check_archive(data, LIMITS)
    root = tmp_path / "code"
    extract_archive(data, root)
    assert (root / "node_modules" / ".bin" / "tool").read_text() == "console.log(1)"
    assert (root / "tool").read_text() == "console.log(1)"
    assert os.readlink(root / "lib") == "node_modules/pkg"


def test_extraction_enforces_the_unpacked_size_whatever_the_headers_say(tmp_path: Path) -> None:
    data = make_zip({"big": random.Random(2).randbytes(300_000)})
    small = ArchiveLimits(max_bytes=1_000_000, max_unpacked_bytes=100_000, max_entries=5)
    with pytest.raises(ClientError, match="unpacks to"):
        extract_archive(data, tmp_path / "code", small)
    assert list(tmp_path.iterdir()) == []


# --- property: whatever the layout, nothing is written outside the root ---------------------

_NAMES = st.sampled_from(["a", "b", "c"])
_MEMBER = st.lists(_NAMES, min_size=1, max_size=3).map("/".join)
_TARGET = st.one_of(
    st.lists(st.sampled_from([".", "..", "a", "b", "c", "a/..", "../.."]), min_size=1, max_size=4).map(
        "/".join
    ),
    st.sampled_from(["/", "/etc", "/tmp/x"]),
)
_ENTRY = st.one_of(
    st.tuples(st.just("file"), _MEMBER, st.just("")),
    st.tuples(st.just("dir"), _MEMBER, st.just("")),
    st.tuples(st.just("link"), _MEMBER, _TARGET),
)


def _layout_zip(layout: list[tuple[str, str, str]]) -> bytes:
    entries = []
    for kind, name, target in layout:
        if kind == "link":
            entries.append(_symlink(name, target))
        elif kind == "dir":
            entries.append((zipfile.ZipInfo(name + "/"), b""))
        else:
            entries.append((zipfile.ZipInfo(name), b"written by the archive"))
    return _zip_with(entries)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(layout=st.lists(_ENTRY, min_size=1, max_size=8))
def test_no_layout_of_links_dirs_and_files_writes_outside_the_root(
    layout: list[tuple[str, str, str]], tmp_path_factory: pytest.TempPathFactory
) -> None:
    base = tmp_path_factory.mktemp("fuzz")
    # Room to climb: a few levels of watched directories above the destination.
    cache = base / "up1" / "up2" / "up3" / "code-cache"
    cache.mkdir(parents=True)
    for level in (base, base / "up1", base / "up1" / "up2"):
        (level / "a").mkdir()
    before = _tree(base)
    destination = cache / "digest"
    data = _layout_zip(layout)
    try:
        extract_archive(data, destination)
    except ClientError:
        assert _tree(base) == before
        return
    check_archive(data, LIMITS)  # what extracts also passes the upload check
    added = _tree(base) - before
    assert all(path.startswith("up1/up2/up3/code-cache/digest") for path in added), added
    for path in destination.rglob("*"):
        assert Path(os.path.realpath(path)).is_relative_to(destination.resolve()), path
