"""The progress channel: a named pipe (FIFO) per task that the worker writes reports to with plain
file I/O, in any language and without a network, and that the runner drains at every tick of the
task's supervision.

A report is one line: ``{"percent": 50, "msg": "half way"}`` (the API's progress body) or
``50 half way`` (``PERCENT [MSG]``, a ``%`` after the number allowed). A line that the writer
does not end with a newline ends when the last writer closes the pipe.

What a worker cannot do through it: block the runner (its end is non-blocking and read a bounded
amount per tick; a worker that writes faster than that blocks itself, in its own write), make it
keep much (at most one line of ``MAX_LINE_BYTES`` is buffered; longer lines are dropped as they
come), or make it write often (reports are coalesced, newest wins, and handed on at most once per
``REPORT_INTERVAL_S``, plus once at the end). Nothing is stored on disk: a FIFO's data lives in
the kernel's pipe buffer."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..logsetup import Throttled
from ..models import MAX_PROGRESS_MSG

log = logging.getLogger("dockworker.runner")

# Lines of at most PIPE_BUF (4096) bytes are written atomically: concurrent writers' reports
# never interleave. A longer line (up to this) carries a msg as long as the API's.
MAX_LINE_BYTES = MAX_PROGRESS_MSG
# One read per tick (20 a second): a flooding writer gets at most this many bytes a tick through.
READ_BYTES_PER_TICK = 64 * 1024
# Of what one tick read, only the newest lines are looked at: the older ones are superseded.
LINES_EXAMINED_PER_TICK = 64
REPORT_INTERVAL_S = 1.0
# At the end the pipe is read until its writers are gone; a worker may have grown its buffer to
# /proc/sys/fs/pipe-max-size (1 MiB by default).
FINAL_READS = 16

_TEXT_REPORT = re.compile(r"(\d{1,3})%?(?:[ \t]+(.*))?", re.DOTALL)
# Control characters (but tab and newline) would reach an operator's terminal through `status`;
# NUL cannot be stored in PostgreSQL text.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


@dataclass(frozen=True, kw_only=True)
class Progress:
    """A report; None leaves that field as it was."""

    percent: int | None = None
    msg: str | None = None

    @property
    def empty(self) -> bool:
        return self.percent is None and self.msg is None

    def over(self, older: Progress) -> Progress:
        """This report, with the fields it leaves out taken from an older one."""
        return Progress(
            percent=older.percent if self.percent is None else self.percent,
            msg=older.msg if self.msg is None else self.msg,
        )


class Refused(ValueError):
    """A line that is not a report; its message says why."""


def parse_report(line: bytes) -> Progress:
    """One line (without its newline) as a report; raises Refused."""
    if len(line) > MAX_LINE_BYTES:
        raise Refused(f"line longer than {MAX_LINE_BYTES} bytes")
    text = line.decode("utf-8", "replace").strip()
    if text.startswith("{"):
        return _parse_json(text)
    match = _TEXT_REPORT.fullmatch(text)
    if match is None:
        raise Refused(f"neither JSON nor 'PERCENT [MSG]': {clean_msg(text[:40])!r}")
    percent = int(match.group(1))
    if percent > 100:
        raise Refused(f"percent {percent} is not within 0-100")
    msg = match.group(2)
    return Progress(percent=percent, msg=clean_msg(msg) if msg else None)


def _parse_json(text: str) -> Progress:
    try:
        report = json.loads(text)
    except (ValueError, RecursionError):
        raise Refused("not valid JSON") from None
    if not isinstance(report, dict):
        raise Refused("the JSON is not an object")
    percent = report.get("percent")
    msg = report.get("msg")
    if percent is not None:
        if isinstance(percent, bool) or not isinstance(percent, int | float):
            raise Refused("percent is not a number")
        if not (math.isfinite(percent) and 0 <= percent <= 100):
            raise Refused(f"percent {percent} is not within 0-100")
        percent = int(percent)
    if msg is not None and not isinstance(msg, str):
        raise Refused("msg is not a string")
    if percent is None and msg is None:
        raise Refused("neither percent nor msg")
    return Progress(percent=percent, msg=None if msg is None else clean_msg(msg))


def clean_msg(msg: str) -> str:
    """A message safe to store and to print: lone surrogates (JSON can carry them) and control
    characters replaced, cut to MAX_PROGRESS_MSG."""
    msg = msg.encode("utf-8", "replace").decode("utf-8")
    return _CONTROL.sub("\ufffd", msg)[:MAX_PROGRESS_MSG]


def make_fifo(task_dir: Path, name: str, gid: int) -> Path:
    """The task's FIFO in its host directory: writable by the task's group (or by anyone, when
    this process may not give it to that group), readable by this process only."""
    path = task_dir / name
    path.unlink(missing_ok=True)
    os.mkfifo(path, 0o600)
    try:
        os.chown(path, -1, gid)
        path.chmod(0o620)
    except PermissionError:
        path.chmod(0o622)
    return path


class ProgressPipe:
    """The runner's end of one task's FIFO. Opened read-only and non-blocking, before the
    container starts (a worker's open for writing would wait for a reader otherwise); holding no
    write end, it reads end-of-file whenever no writer has the pipe open, which ends a line left
    without its newline."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd
        self._partial = b""
        self._discarding = False

    @classmethod
    def open(cls, path: Path) -> ProgressPipe:
        """Raises OSError, also when ``path`` is not a FIFO."""
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW)
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            os.close(fd)
            raise OSError(f"{path} is not a FIFO")
        return cls(fd)

    def read(self) -> tuple[Progress, str | None, bool]:
        """One bounded read: the reports it completed, coalesced (an empty Progress when none),
        why the newest refused line was refused (None when none was), and whether the pipe is
        drained (nothing more to read now)."""
        if self._fd is None:
            return Progress(), None, True
        data = b""
        eof = False
        while len(data) < READ_BYTES_PER_TICK:
            try:
                chunk = os.read(self._fd, READ_BYTES_PER_TICK - len(data))
            except BlockingIOError:  # writers have it open, nothing more written
                break
            if not chunk:  # no writer has it open
                eof = True
                break
            data += chunk
        lines, refusal = self._split(data, eof)
        progress, refused = _coalesce(lines)
        return progress, refused or refusal, eof or len(data) < READ_BYTES_PER_TICK

    def _split(self, chunk: bytes, eof: bool) -> tuple[list[bytes], str | None]:
        """The lines ``chunk`` completes (oldest first); an over-long one is dropped as it comes."""
        refusal: str | None = None
        if self._discarding:
            newline = chunk.find(b"\n")
            if newline < 0:
                self._discarding = not eof
                return [], None
            chunk = chunk[newline + 1 :]
            self._discarding = False
        lines = chunk.split(b"\n")
        lines[0] = self._partial + lines[0]
        self._partial = lines.pop()
        if len(self._partial) > MAX_LINE_BYTES:
            self._partial = b""
            self._discarding = not eof
            refusal = f"line longer than {MAX_LINE_BYTES} bytes"
        if eof and self._partial:
            lines.append(self._partial)
            self._partial = b""
        return lines, refusal

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _coalesce(lines: list[bytes]) -> tuple[Progress, str | None]:
    """The newest lines merged into one report (the newest value of each field wins), and why the
    newest refused line among them was refused."""
    merged = Progress()
    refusal: str | None = None
    examined = 0
    for line in reversed(lines):
        if examined == LINES_EXAMINED_PER_TICK or (merged.percent is not None and merged.msg is not None):
            break
        examined += 1
        if not line.strip():
            continue
        try:
            merged = merged.over(parse_report(line))
        except Refused as exc:
            refusal = refusal or str(exc)
    return merged, refusal


class ProgressSink(Protocol):
    def report(self, progress: Progress) -> bool:
        """Hand a report on; False when no more are wanted (the task's lease is lost)."""
        ...

    def refused(self, reason: str) -> None:
        """A line was not a report (called once per task: the first time)."""
        ...


class ProgressRelay:
    """Drains a task's pipe at each :meth:`tick` (called by the task's supervising thread) and
    hands the reports to a sink, coalesced: at most one call per ``interval_s``, and the last
    report at :meth:`finish`. A sink that fails is tried again after ``interval_s``; one that
    wants no more reports gets none, while the pipe is still drained."""

    def __init__(
        self,
        pipe: ProgressPipe,
        sink: ProgressSink,
        *,
        name: str,
        interval_s: float = REPORT_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._pipe = pipe
        self._sink = sink
        self._name = name
        self._interval_s = interval_s
        self._clock = clock
        self._pending = Progress()
        self._last_sent: float | None = None
        self._refusal_told = False
        self._wanted = True
        self._log = Throttled(log, interval_s=30.0)

    def tick(self) -> None:
        try:
            self._drain(reads=1)
            now = self._clock()
            if self._last_sent is None or now - self._last_sent >= self._interval_s:
                self._send(now)
        except Exception as exc:  # the channel must never stop the task's supervision
            self._failed("progress.relay_failed", exc)

    def finish(self) -> None:
        """Read what the worker wrote last and hand it on now (the container has exited)."""
        try:
            self._drain(reads=FINAL_READS)
            self._send(self._clock())
        except Exception as exc:
            self._failed("progress.relay_failed", exc)

    def close(self) -> None:
        self._pipe.close()

    def _drain(self, reads: int) -> None:
        for _ in range(reads):
            progress, refusal, drained = self._pipe.read()
            if not progress.empty:
                self._pending = progress.over(self._pending)
            if refusal is not None and not self._refusal_told:
                self._refusal_told = True
                self._sink.refused(refusal)
            if drained:
                return

    def _send(self, now: float) -> None:
        if self._pending.empty or not self._wanted:
            return
        self._last_sent = now
        try:
            self._wanted = self._sink.report(self._pending)
        except Exception as exc:  # kept, and tried again after the interval
            self._failed("progress.report_failed", exc)
            return
        self._pending = Progress()

    def _failed(self, event: str, exc: Exception) -> None:
        self._log(
            logging.WARNING,
            event,
            {"task_id": self._name, "error": f"{type(exc).__name__}: {exc}"},
            exc_info=True,
        )


def open_relay(path: Path, sink: ProgressSink, *, name: str) -> ProgressRelay | None:
    """A relay on the FIFO at ``path``, or None when there is none (a container started by a
    runner version without the channel) or it cannot be opened."""
    try:
        pipe = ProgressPipe.open(path)
    except OSError as exc:
        log.warning("progress.unavailable", extra={"task_id": name, "error": str(exc)})
        return None
    return ProgressRelay(pipe, sink, name=name)


def close_relay(relay: ProgressRelay | None) -> None:
    if relay is not None:
        with contextlib.suppress(OSError):
            relay.close()
