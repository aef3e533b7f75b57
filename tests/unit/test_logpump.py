"""LogPump: chunks to the sink, the cap and its marker, resuming after re-adoption."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from dockworker.errors import InfrastructureError
from dockworker.runner.logpump import LogPump


class Sink:
    def __init__(self) -> None:
        self.data = b""
        self.consumed: list[int] = []

    def __call__(self, data: bytes, consumed: int) -> None:
        self.data += data
        self.consumed.append(consumed)


def _pump(chunks: list[bytes], cap: int = 1000, **kwargs: int) -> tuple[LogPump, Sink]:
    sink = Sink()
    pump = LogPump(iter(chunks), sink, cap, name="t", **kwargs)
    pump.start()
    assert pump.join(5)
    pump.flush(force=True)
    return pump, sink


def test_everything_reaches_the_sink_with_the_bytes_consumed() -> None:
    pump, sink = _pump([b"a\n", b"bc\n"])
    assert sink.data == b"a\nbc\n"
    assert sink.consumed[-1] == 5
    assert pump.error is None and pump.done.is_set()


def test_output_past_the_cap_is_dropped_after_one_marker() -> None:
    _, sink = _pump([b"x" * 600, b"y" * 600, b"z" * 600], cap=1000)
    assert sink.data == b"x" * 600 + b"y" * 400 + b"\n[dockworker: log truncated at 1000 bytes]\n"
    assert sink.consumed[-1] == 1800


def test_the_cap_counts_what_earlier_attempts_kept() -> None:
    _, sink = _pump([b"y" * 600], cap=1000, already_kept=900)
    assert sink.data == b"y" * 100 + b"\n[dockworker: log truncated at 1000 bytes]\n"


def test_a_full_log_from_earlier_gets_no_second_marker() -> None:
    _, sink = _pump([b"y" * 600], cap=1000, already_kept=1000)
    assert sink.data == b""


def test_resuming_skips_what_was_consumed() -> None:
    _, sink = _pump([b"one\n", b"two\nthree\n"], skip=8, already_kept=8)
    assert sink.data == b"three\n"
    assert sink.consumed[-1] == 14


def test_nothing_is_flushed_before_it_is_due() -> None:
    sink = Sink()
    pump = LogPump(iter([b"small"]), sink, 1000, name="t")
    pump.start()
    assert pump.join(5)
    pump.flush()  # neither 64 KiB nor 0.25 s since the pump was made
    assert sink.data in (b"", b"small")
    pump.flush(force=True)
    assert sink.data == b"small"


def test_a_broken_stream_is_kept_as_the_pump_error() -> None:
    def broken() -> Iterator[bytes]:
        yield b"partial\n"
        raise InfrastructureError("read output: connection reset")

    sink = Sink()
    pump = LogPump(broken(), sink, 1000, name="t")
    pump.start()
    assert pump.join(5)
    pump.flush(force=True)
    assert sink.data == b"partial\n"
    assert isinstance(pump.error, InfrastructureError)


@pytest.mark.parametrize(
    ("chunks", "line"),
    [([b"a\nlast words\n\n"], "last words"), ([b""], ""), ([b"x" * 300], "x" * 199 + "…")],
)
def test_last_line(chunks: list[bytes], line: str) -> None:
    pump, _ = _pump(chunks)
    assert pump.last_line() == line
