"""A worker directory as the zip an upload sends (``run-local`` unpacks the same zip).

Left out: version-control directories and ``__pycache__`` always, and whatever the directory's
``.dockworkerignore`` names, in .gitignore syntax: one pattern a line, ``#`` comments, ``!`` to
take a path back in, a trailing ``/`` for directories only, a ``/`` at the start or inside to
anchor the pattern at the directory (else it matches a name at any depth), ``*``, ``?``,
``[abc]`` and ``**`` across directories. An ignored directory is not looked into."""

from __future__ import annotations

import io
import os
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import ClientError

IGNORE_FILE = ".dockworkerignore"
ALWAYS_LEFT_OUT = (".git/", ".hg/", ".svn/", "__pycache__/")


@dataclass(frozen=True)
class Rule:
    regex: re.Pattern[str]
    negated: bool
    directories_only: bool


def parse_rules(text: str, origin: str = IGNORE_FILE) -> list[Rule]:
    rules = []
    for number, raw in enumerate(text.splitlines(), 1):
        pattern = raw.rstrip()
        if not pattern or pattern.startswith("#"):
            continue
        negated = pattern.startswith("!")
        pattern = pattern[1:] if negated else pattern
        if pattern.startswith("\\"):  # "\#name", "\!name": a literal first character
            pattern = pattern[1:]
        directories_only = pattern.endswith("/")
        pattern = pattern.rstrip("/")
        if not pattern:
            raise ClientError(f"{origin} line {number}: {raw!r} is not a pattern")
        anchored = "/" in pattern
        try:
            regex = re.compile(_translate(pattern.lstrip("/"), anchored))
        except re.error as exc:
            raise ClientError(f"{origin} line {number}: cannot read {raw!r}: {exc}") from exc
        rules.append(Rule(regex=regex, negated=negated, directories_only=directories_only))
    return rules


def _translate(pattern: str, anchored: bool) -> str:
    out = [] if anchored else ["(?:.*/)?"]
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("/**", i) and i + 3 == len(pattern):
            out.append("/.*")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and "]" in pattern[i + 2 :]:
            end = pattern.index("]", i + 2)
            body = pattern[i + 1 : end]
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return "".join(out) + r"\Z"


def is_ignored(relative: str, is_dir: bool, rules: list[Rule]) -> bool:
    """The last rule that matches decides, as in git."""
    ignored = False
    for rule in rules:
        if rule.directories_only and not is_dir:
            continue
        if rule.regex.match(relative):
            ignored = not rule.negated
    return ignored


def included_files(directory: Path) -> Iterator[tuple[Path, str]]:
    """The files of ``directory`` an upload takes, as (path, name in the zip), sorted."""
    if not directory.is_dir():
        raise ClientError(f"{directory} is not a directory")
    rules = parse_rules("\n".join(ALWAYS_LEFT_OUT), "the built-in rules")
    ignore_file = directory / IGNORE_FILE
    if ignore_file.is_file():
        try:
            rules += parse_rules(ignore_file.read_text(), str(ignore_file))
        except (OSError, UnicodeDecodeError) as exc:
            raise ClientError(f"cannot read {ignore_file}: {exc}") from exc
    for root, dirs, files in os.walk(directory):
        base = Path(root)
        prefix = base.relative_to(directory).as_posix()
        prefix = "" if prefix == "." else prefix + "/"
        dirs[:] = sorted(d for d in dirs if not is_ignored(prefix + d, True, rules))
        for name in sorted(files):
            if not is_ignored(prefix + name, False, rules):
                yield base / name, prefix + name


def zip_directory(directory: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path, name in included_files(directory):
            if path.is_file():  # a symlink to a directory stays out, as before
                archive.write(path, name)
    return buffer.getvalue()
