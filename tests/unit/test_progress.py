"""The progress channel without a container: the line parser, the pipe's reader (on a real FIFO)
with its limits, and the relay's coalescing and pacing."""

from __future__ import annotations

import contextlib
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dockworker.runner.progress import (
    LINES_EXAMINED_PER_TICK,
    MAX_LINE_BYTES,
    READ_BYTES_PER_TICK,
    Progress,
    ProgressPipe,
    ProgressRelay,
    Refused,
    make_fifo,
    parse_report,
)

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b'{"percent": 50, "msg": "half way"}', Progress(percent=50, msg="half way")),
        (b'{"percent": 0}', Progress(percent=0)),
        (b'{"msg": "only a message"}', Progress(msg="only a message")),
        (b'{"percent": 99.9, "msg": null, "other": 1}', Progress(percent=99)),
        (b"50 half way", Progress(percent=50, msg="half way")),
        (b"  100%   done \r", Progress(percent=100, msg="done")),
        (b"7", Progress(percent=7)),
        (b"30\tthirty", Progress(percent=30, msg="thirty")),
        (b"40 caf\xc3\xa9 \xff", Progress(percent=40, msg="caf\u00e9 \ufffd")),
        (
            b'{"msg": "bell\\u0007 nul\\u0000 esc\\u001b[31m tab\\t nl\\n"}',
            Progress(msg="bell\ufffd nul\ufffd esc\ufffd[31m tab\t nl\n"),
        ),
        (b'{"msg": "lone \\ud800 surrogate"}', Progress(msg="lone ? surrogate")),
    ],
)
def test_reports_in_both_forms(line: bytes, expected: Progress) -> None:
    assert parse_report(line) == expected


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"half way", "neither JSON nor 'PERCENT [MSG]'"),
        (b"101 too much", "percent 101 is not within 0-100"),
        (b"-5 negative", "neither JSON nor"),
        (b"5000", "neither JSON nor"),
        (b'{"percent": 101}', "percent 101 is not within 0-100"),
        (b'{"percent": -1}', "percent -1 is not within 0-100"),
        (b'{"percent": "50"}', "percent is not a number"),
        (b'{"percent": true}', "percent is not a number"),
        (b'{"percent": NaN}', "is not within 0-100"),
        (b'{"percent": 1e999}', "is not within 0-100"),
        (b'{"percent": ' + b"9" * 5000 + b"}", "not valid JSON"),
        (b'{"msg": {"nested": 1}}', "msg is not a string"),
        (b'{"other": 1}', "neither percent nor msg"),
        (b"{not json", "not valid JSON"),
        (b"{" + b'"a":[' * 10_000, "not valid JSON"),
        (b"[" * 30_000 + b"]" * 30_000, "neither JSON nor"),
        (b"\x89PNG\r\n\x1a\n\x00\x00", "neither JSON nor"),
        (b"1" + b" " * MAX_LINE_BYTES, f"line longer than {MAX_LINE_BYTES} bytes"),
    ],
)
def test_lines_that_are_not_reports_are_refused(line: bytes, reason: str) -> None:
    with pytest.raises(Refused) as refused:
        parse_report(line)
    assert reason in str(refused.value)


def test_a_deeply_nested_json_object_is_refused_not_a_crash() -> None:
    with pytest.raises(Refused, match="not valid JSON"):
        parse_report(b'{"msg": ' + b"[" * 30_000 + b"]" * 30_000 + b"}")


def test_a_newer_report_keeps_the_fields_it_leaves_out() -> None:
    older = Progress(percent=10, msg="starting")
    assert Progress(percent=20).over(older) == Progress(percent=20, msg="starting")
    assert Progress(msg="later").over(older) == Progress(percent=10, msg="later")


# --- the pipe -------------------------------------------------------------------------------------


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    return make_fifo(tmp_path, "progress", os.getgid())


@pytest.fixture
def pipe(fifo: Path) -> Iterator[ProgressPipe]:
    opened = ProgressPipe.open(fifo)
    yield opened
    opened.close()


def write(fifo: Path, data: bytes) -> None:
    """As a worker does: open, write, close (the reader is open, so the open does not block;
    the pipe holds 64 KiB, so a longer write would)."""
    assert len(data) <= 64 * 1024
    fd = os.open(fifo, os.O_WRONLY)
    try:
        assert os.write(fd, data) == len(data)
    finally:
        os.close(fd)


def read_all(pipe: ProgressPipe) -> tuple[Progress, list[str]]:
    merged, refusals = Progress(), []
    while True:
        progress, refusal, drained = pipe.read()
        merged = progress.over(merged)
        if refusal:
            refusals.append(refusal)
        if drained:
            return merged, refusals


def test_the_fifo_is_writable_by_the_tasks_group_and_readable_by_the_runner_only(fifo: Path) -> None:
    mode = fifo.stat().st_mode
    assert stat.S_ISFIFO(mode)
    assert fifo.stat().st_gid == os.getgid()
    assert stat.S_IMODE(mode) & 0o044 == 0  # nobody else reads the reports
    assert stat.S_IMODE(mode) & 0o020


def test_only_a_fifo_is_opened(tmp_path: Path) -> None:
    regular = tmp_path / "regular"
    regular.write_text("50\n")
    with pytest.raises(OSError, match="not a FIFO"):
        ProgressPipe.open(regular)
    (tmp_path / "link").symlink_to(regular)
    with pytest.raises(OSError, match="symbolic links"):
        ProgressPipe.open(tmp_path / "link")


def test_nothing_written_reads_nothing(pipe: ProgressPipe) -> None:
    assert pipe.read() == (Progress(), None, True)


def test_lines_of_several_writers_are_coalesced_newest_first(fifo: Path, pipe: ProgressPipe) -> None:
    write(fifo, b'{"percent": 10, "msg": "first"}\n')
    write(fifo, b"20\n")
    write(fifo, b"\n")
    assert read_all(pipe) == (Progress(percent=20, msg="first"), [])


def test_a_line_without_its_newline_ends_when_the_writer_closes(fifo: Path, pipe: ProgressPipe) -> None:
    write(fifo, b"60 no newline")
    assert read_all(pipe) == (Progress(percent=60, msg="no newline"), [])


def test_a_writer_that_holds_the_pipe_open_blocks_nothing(fifo: Path, pipe: ProgressPipe) -> None:
    fd = os.open(fifo, os.O_WRONLY)
    try:
        os.write(fd, b"30 partial li")
        started = time.monotonic()
        assert pipe.read() == (Progress(), None, True)
        assert pipe.read() == (Progress(), None, True)
        assert time.monotonic() - started < 0.5
        os.write(fd, b"ne\n40")
        assert read_all(pipe) == (Progress(percent=30, msg="partial line"), [])
    finally:
        os.close(fd)
    assert read_all(pipe) == (Progress(percent=40), [])


def test_an_over_long_line_is_dropped_as_it_comes(fifo: Path, pipe: ProgressPipe) -> None:
    fd = os.open(fifo, os.O_WRONLY)
    try:
        os.write(fd, b"20 before\n")
        assert read_all(pipe) == (Progress(percent=20, msg="before"), [])
        refusals: list[str] = []
        for _ in range(4):  # 4 x 60 KB without a newline: more than a line may hold
            os.write(fd, b"9" * 60_000)
            refusals += read_all(pipe)[1]
        assert refusals == [f"line longer than {MAX_LINE_BYTES} bytes"]
        os.write(fd, b"tail of the long line\n70 after\n")
        assert read_all(pipe) == (Progress(percent=70, msg="after"), [])
    finally:
        os.close(fd)


def test_the_end_of_a_dropped_line_is_dropped_at_the_writers_close(fifo: Path, pipe: ProgressPipe) -> None:
    fd = os.open(fifo, os.O_WRONLY)
    try:
        for _ in range(2):
            os.write(fd, b"1" * (MAX_LINE_BYTES // 2 - 10))
            assert read_all(pipe) == (Progress(), [])
        os.write(fd, b"1" * 30)
        assert read_all(pipe)[1] == [f"line longer than {MAX_LINE_BYTES} bytes"]
        os.write(fd, b"1" * 10)  # still the same line
    finally:
        os.close(fd)
    assert read_all(pipe) == (Progress(), [])
    write(fifo, b"80\n")
    assert read_all(pipe) == (Progress(percent=80), [])


def test_garbage_is_refused_and_a_later_report_still_counts(fifo: Path, pipe: ProgressPipe) -> None:
    write(fifo, os.urandom(3000).replace(b"\n", b"") + b"\n" + b"\x00\xff" * 10 + b"\n")
    progress, refusals = read_all(pipe)
    assert progress == Progress() and len(refusals) == 1
    write(fifo, b"90 fine\n")
    assert read_all(pipe) == (Progress(percent=90, msg="fine"), [])


def test_one_read_is_bounded_and_examines_the_newest_lines_only(fifo: Path, pipe: ProgressPipe) -> None:
    fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    try:
        flood = b"".join(b"%d\n" % (i % 100) for i in range(60_000))
        written = os.write(fd, flood)  # as much as the pipe's buffer takes
        progress, refusal, drained = pipe.read()
    finally:
        os.close(fd)
    assert written >= READ_BYTES_PER_TICK and not drained
    assert refusal is None
    newest_complete = flood[:READ_BYTES_PER_TICK].rsplit(b"\n", 2)[-2]
    assert progress == Progress(percent=int(newest_complete))


def test_the_newest_valid_fields_win_within_the_lines_examined(fifo: Path, pipe: ProgressPipe) -> None:
    msg_line = b'{"msg": "old message"}\n'
    write(fifo, msg_line + b"5\n" * (LINES_EXAMINED_PER_TICK - 1) + b"garbage\n")
    progress, refusals = read_all(pipe)
    assert progress == Progress(percent=5)  # the msg line is older than the lines examined
    assert refusals == ["neither JSON nor 'PERCENT [MSG]': 'garbage'"]
    write(fifo, msg_line + b"6\n" * (LINES_EXAMINED_PER_TICK - 2))
    assert read_all(pipe) == (Progress(percent=6, msg="old message"), [])


# --- the relay ------------------------------------------------------------------------------------


class Sink:
    def __init__(self, answers: list[bool | Exception] | None = None) -> None:
        self.reports: list[Progress] = []
        self.refusals: list[str] = []
        self._answers = answers or []

    def report(self, progress: Progress) -> bool:
        answer = self._answers.pop(0) if self._answers else True
        if isinstance(answer, Exception):
            raise answer
        self.reports.append(progress)
        return answer

    def refused(self, reason: str) -> None:
        self.refusals.append(reason)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def relay_of(pipe: ProgressPipe, sink: Sink, clock: Clock) -> ProgressRelay:
    return ProgressRelay(pipe, sink, name="t", interval_s=1.0, clock=clock)


def test_reports_are_paced_coalesced_and_the_last_one_is_sent_at_the_end(
    fifo: Path, pipe: ProgressPipe
) -> None:
    sink, clock = Sink(), Clock()
    relay = relay_of(pipe, sink, clock)
    write(fifo, b"10 first\n")
    relay.tick()
    assert sink.reports == [Progress(percent=10, msg="first")]
    for percent in (20, 30, 40):
        write(fifo, b"%d\n" % percent)
        clock.now += 0.3
        relay.tick()
    assert len(sink.reports) == 1  # within the interval: held
    clock.now += 0.2
    relay.tick()
    assert sink.reports[-1] == Progress(percent=40)
    clock.now += 5
    relay.tick()
    assert len(sink.reports) == 2  # nothing new: nothing sent
    write(fifo, b'{"msg": "last words"}\n')
    relay.finish()
    assert sink.reports[-1] == Progress(msg="last words")


def test_a_failing_sink_gets_the_report_again_after_the_interval(fifo: Path, pipe: ProgressPipe) -> None:
    sink, clock = Sink([RuntimeError("store down")]), Clock()
    relay = relay_of(pipe, sink, clock)
    write(fifo, b"10\n")
    relay.tick()
    write(fifo, b"15 more\n")
    clock.now += 0.5
    relay.tick()
    assert sink.reports == []
    clock.now += 0.5
    relay.tick()
    assert sink.reports == [Progress(percent=15, msg="more")]


def test_a_lost_lease_stops_the_reports_but_not_the_draining(fifo: Path, pipe: ProgressPipe) -> None:
    sink, clock = Sink([False]), Clock()
    relay = relay_of(pipe, sink, clock)
    write(fifo, b"10\n")
    relay.tick()
    fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    try:
        for _ in range(20):  # more than the pipe holds: the writer would block if not drained
            clock.now += 2
            os.write(fd, b"20\n" * 10_000)
            relay.tick()
    finally:
        os.close(fd)
    relay.finish()
    assert sink.reports == [Progress(percent=10)]


def test_only_the_first_refusal_is_told(fifo: Path, pipe: ProgressPipe) -> None:
    sink, clock = Sink(), Clock()
    relay = relay_of(pipe, sink, clock)
    write(fifo, b"nonsense\n")
    relay.tick()
    write(fifo, b"more nonsense\n")
    relay.tick()
    assert sink.refusals == ["neither JSON nor 'PERCENT [MSG]': 'nonsense'"]


def test_a_sink_that_raises_on_a_refusal_does_not_stop_the_relay(fifo: Path, pipe: ProgressPipe) -> None:
    class Broken(Sink):
        def refused(self, reason: str) -> None:
            raise RuntimeError("store down")

    sink, clock = Broken(), Clock()
    relay = relay_of(pipe, sink, clock)
    write(fifo, b"nonsense\n")
    relay.tick()
    write(fifo, b"50\n")
    clock.now += 1
    relay.tick()
    assert sink.reports == [Progress(percent=50)]


@pytest.mark.parametrize(
    "flood_line",
    [b"\n", b"5\n", b'{"percent": 42, "msg": "' + b"x" * 100 + b'"}\n', b"garbage line\n"],
    ids=["blank", "short", "json", "garbage"],
)
def test_a_flood_costs_a_tick_little_and_fills_only_the_writers_pipe(
    fifo: Path, pipe: ProgressPipe, flood_line: bytes
) -> None:
    sink, clock = Sink(), Clock()
    relay = relay_of(pipe, sink, clock)
    flood = flood_line * (4 * READ_BYTES_PER_TICK // len(flood_line))
    fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    spent = 0.0
    try:
        for _ in range(40):  # two seconds of ticks, the pipe full at each
            with contextlib.suppress(BlockingIOError):
                assert os.write(fd, flood) <= 1024 * 1024  # a pipe holds this much at most
            started = time.perf_counter()
            relay.tick()
            spent += time.perf_counter() - started
            clock.now += 0.05
    finally:
        os.close(fd)
    relay.finish()
    assert spent / 40 < 0.005, f"{spent / 40 * 1000:.1f} ms a tick"
    assert len(sink.reports) <= 3  # one a second, and the last
    assert len(sink.refusals) <= 1
