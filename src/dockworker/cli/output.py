"""What the CLI prints, and how, for a person at a terminal or for a script.

At a terminal: tables with aligned columns that fit its width (ids are never shortened; long
free text is cut with an ellipsis; the least useful columns go first when even that does not
fit), a bold header, colour unless NO_COLOR is set. Into a pipe or a file: one record a line,
tab-separated, no header, nothing wrapped or decorated. ``--json``: one JSON document on stdout.
Messages for the person (status lines, warnings, errors) go to stderr, never wrapped.

stdout is written through :class:`ReaderGuard` so that a reader that stops early (``| head -1``,
``| grep -q``) ends the command quietly with status 0 (see ``main``)."""

from __future__ import annotations

import json
import os
import shutil
import sys
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any, TextIO

GAP = "  "
ELLIPSIS = "…"
BYTE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


class ReaderGone(Exception):
    """stdout's reader went away (broken pipe). Deliberately not an OSError: the command
    framework turns those into exit status 1."""


class _GuardedBuffer:
    def __init__(self, raw: IO[bytes]) -> None:
        self._raw = raw

    def write(self, data: bytes) -> int:
        try:
            return self._raw.write(data)
        except BrokenPipeError:
            raise ReaderGone from None

    def flush(self) -> None:
        try:
            self._raw.flush()
        except BrokenPipeError:
            raise ReaderGone from None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)


class _DroppingBuffer:
    def __init__(self, raw: IO[bytes]) -> None:
        self._raw = raw
        self.gone = False

    def write(self, data: bytes) -> int:
        if not self.gone:
            try:
                return self._raw.write(data)
            except BrokenPipeError:
                self.gone = True
                silence_output(stdout=False)
        return len(data)

    def flush(self) -> None:
        if not self.gone:
            try:
                self._raw.flush()
            except BrokenPipeError:
                self.gone = True
                silence_output(stdout=False)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)


class ReaderGuard:
    """Wraps sys.stdout: a broken pipe raises ReaderGone instead of BrokenPipeError."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self.buffer = _GuardedBuffer(stream.buffer)

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            raise ReaderGone from None

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            raise ReaderGone from None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class QuietWhenGone:
    """Wraps sys.stderr: once its reader has gone, what is written there is dropped, and the
    command goes on to its own exit status (a message nobody can read changes nothing)."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self.buffer = _DroppingBuffer(stream.buffer)

    def write(self, text: str) -> int:
        if not self.buffer.gone:
            try:
                return self._stream.write(text)
            except BrokenPipeError:
                self.buffer.gone = True
                silence_output(stdout=False)
        return len(text)

    def flush(self) -> None:
        if not self.buffer.gone:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self.buffer.gone = True
                silence_output(stdout=False)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def silence_output(*, stdout: bool = True) -> None:
    """After the reader left: point stdout (and stderr) at /dev/null so that the interpreter's
    final flush has nowhere to fail ("Exception ignored ... BrokenPipeError")."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        for stream in (sys.__stdout__, sys.__stderr__) if stdout else (sys.__stderr__,):
            if stream is not None:
                os.dup2(devnull, stream.fileno())
    finally:
        os.close(devnull)


def stdout_is_terminal() -> bool:
    return sys.stdout.isatty()


def _colour(stream: IO[str]) -> bool:
    return stream.isatty() and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"


def _styled(text: str, code: str, stream: IO[str]) -> str:
    return f"\033[{code}m{text}\033[0m" if _colour(stream) else text


def line(text: str = "") -> None:
    """One line of output (stdout)."""
    sys.stdout.write(f"{text}\n")


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def note(text: str) -> None:
    """A message for the person (stderr): progress, a task's closing line, a hint."""
    sys.stderr.write(f"{text}\n")
    sys.stderr.flush()


def warn(text: str) -> None:
    sys.stderr.write(f"{_styled('warning:', '33', sys.stderr)} {text}\n")
    sys.stderr.flush()


def error(text: str) -> None:
    sys.stderr.write(f"{_styled('error:', '31', sys.stderr)} {text}\n")
    sys.stderr.flush()


def bold(text: str) -> str:
    return _styled(text, "1", sys.stdout)


def flat(value: Any) -> str:
    """A value as one line of text: None is empty, lists are comma-separated, tabs and newlines
    become spaces (they would break the plain output's records)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ", ".join(flat(item) for item in value)
    return " ".join(str(value).replace("\t", " ").splitlines())


def width_of(text: str) -> int:
    """Terminal cells: East Asian wide characters take two, combining marks none."""
    return sum(
        0 if unicodedata.combining(char) else 2 if unicodedata.east_asian_width(char) in "WF" else 1
        for char in text
    )


def cut(text: str, width: int) -> str:
    """The text in at most ``width`` cells, with an ellipsis when something was cut."""
    if width_of(text) <= width:
        return text
    kept, used = [], 0
    for char in text:
        cells = width_of(char)
        if used + cells > width - 1:
            break
        kept.append(char)
        used += cells
    return "".join(kept) + ELLIPSIS


@dataclass(frozen=True)
class Col:
    """A table column. ``value`` takes a record. A ``flex`` column (free text) may be cut down
    to ``min_width``; the others are shown whole. When even that does not fit, columns with a
    ``drop`` rank go, lowest rank first."""

    header: str
    value: Callable[[Any], Any]
    flex: bool = False
    min_width: int = 8
    drop: int | None = None
    right: bool = False


def table(columns: Sequence[Col], records: Sequence[Any], *, as_json: bool = False) -> None:
    """Print records as JSON (``--json``), as a table at a terminal, or as tab-separated lines."""
    if as_json:
        print_json(records)
        return
    rows = [[flat(column.value(record)) for column in columns] for record in records]
    if not stdout_is_terminal():
        for row in rows:
            line("\t".join(row))
        return
    width = shutil.get_terminal_size((100, 24)).columns
    shown, widths = fit_columns(columns, rows, width)
    header = GAP.join(_pad(columns[i].header, widths[i], columns[i].right) for i in shown).rstrip()
    line(bold(header))
    for row in rows:
        cells = [_pad(cut(row[i], widths[i]), widths[i], columns[i].right) for i in shown]
        line(GAP.join(cells).rstrip())


def fit_columns(columns: Sequence[Col], rows: list[list[str]], width: int) -> tuple[list[int], list[int]]:
    """Which columns to show, and the width of each (indexed like ``columns``)."""
    natural = [
        max([width_of(column.header), *(width_of(row[i]) for row in rows)])
        for i, column in enumerate(columns)
    ]
    shown = list(range(len(columns)))
    droppable = sorted((c.drop, i) for i, c in enumerate(columns) if c.drop is not None)
    while True:
        widths = list(natural)
        excess = sum(widths[i] for i in shown) + len(GAP) * (len(shown) - 1) - width
        for i in sorted(shown, key=lambda i: -natural[i]):
            if excess <= 0:
                break
            if columns[i].flex:
                floor = min(natural[i], max(columns[i].min_width, width_of(columns[i].header)))
                taken = min(excess, widths[i] - floor)
                widths[i] -= taken
                excess -= taken
        if excess <= 0 or not droppable:
            return shown, widths
        shown.remove(droppable.pop(0)[1])


def _pad(text: str, width: int, right: bool) -> str:
    space = " " * max(0, width - width_of(text))
    return space + text if right else text + space


def fields(
    record: dict[str, Any],
    keys: Sequence[str],
    *,
    as_json: bool = False,
    human: Mapping[str, Callable[[Any], str]] | None = None,
) -> None:
    """A record as JSON (``--json``), or as ``key: value`` lines (keys aligned at a terminal),
    skipping empty values. At a terminal the values of ``human``'s keys are shown through its
    functions (e.g. milliseconds as seconds); elsewhere every value is shown as it is."""
    if as_json:
        print_json(record)
        return
    present = [key for key in keys if record.get(key) not in (None, "")]
    terminal = stdout_is_terminal()
    shown = human if terminal and human else {}
    align = max((len(key) for key in present), default=0) if terminal else 0
    for key in present:
        value = shown[key](record[key]) if key in shown else flat(record[key])
        line(f"{key:>{align}}: {value}")


def show_milliseconds(value: Any) -> str:
    """A count of milliseconds for a person: ``850 ms``, ``1.25 s``, ``2 min 5 s``, ``1 h 2 min``."""
    ms = int(value)
    if ms < 1000:
        return f"{ms} ms"
    if ms < 60_000:
        return f"{ms / 1000:.2f} s"
    minutes, seconds = divmod(round(ms / 1000), 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def show_bytes(value: Any) -> str:
    """A count of bytes for a person, in binary units: ``512 B``, ``153.8 MiB``."""
    count, index = float(value), 0
    while count >= 1024 and index < len(BYTE_UNITS) - 1:
        count /= 1024
        index += 1
    return f"{count:.0f} B" if index == 0 else f"{count:.1f} {BYTE_UNITS[index]}"


class RichOut:
    """``out.print(...)`` with rich markup, for the service commands (``up``): rich is loaded
    only when one of them prints."""

    def print(self, *objects: Any, **options: Any) -> None:
        from rich.console import Console

        Console(soft_wrap=True).print(*objects, **options)
