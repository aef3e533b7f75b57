"""What an upload zips: everything but version control, __pycache__ and what .dockworkerignore names."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest

from dockworker.cli.bundle import included_files, is_ignored, parse_rules, zip_directory
from dockworker.errors import ClientError


def tree(root: Path, *names: str) -> Path:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(name)
    return root


def names(directory: Path) -> list[str]:
    return [name for _, name in included_files(directory)]


def test_version_control_and_caches_always_stay_out(tmp_path: Path) -> None:
    root = tree(tmp_path, "main.py", ".git/config", "lib/__pycache__/x.pyc", "lib/util.py", ".env")
    assert names(root) == [".env", "main.py", "lib/util.py"]


def test_the_ignore_file_in_gitignore_syntax(tmp_path: Path) -> None:
    root = tree(
        tmp_path,
        "main.py",
        ".env",
        "node_modules/left/index.js",
        "build/out.bin",
        "src/build/kept.txt",
        "docs/a.md",
        "docs/deep/b.md",
        "logs/one.log",
        "logs/keep.log",
        "data/x.csv",
        "data/sub/y.csv",
    )
    (root / ".dockworkerignore").write_text(
        "# secrets and dependencies\n.env\nnode_modules/\n/build\ndocs/*.md\n*.log\n!keep.log\ndata/**\n"
    )
    assert names(root) == [
        ".dockworkerignore",
        "main.py",
        "docs/deep/b.md",
        "logs/keep.log",
        "src/build/kept.txt",
    ]
    with zipfile.ZipFile(io.BytesIO(zip_directory(root))) as archive:
        assert sorted(archive.namelist()) == sorted(names(root))
        assert archive.read("main.py") == b"main.py"


def test_directory_only_patterns_and_double_stars() -> None:
    rules = parse_rules("cache/\n**/tmp/*.txt\n")
    assert is_ignored("cache", True, rules)
    assert not is_ignored("cache", False, rules)
    assert is_ignored("a/b/tmp/x.txt", False, rules)
    assert is_ignored("tmp/x.txt", False, rules)
    assert not is_ignored("tmp/x.md", False, rules)


def test_bad_patterns_and_directories_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ClientError, match="line 2"):
        parse_rules("ok\n!/\n")
    with pytest.raises(ClientError, match="is not a directory"):
        names(tmp_path / "missing")
