"""Progress reporting for stack builds: a callback taking a human message and the fraction of
the whole build done (0..1, or None when unknown).

A message is either a step of the build ("apt-get update", "importing ... into the engine") or
a :class:`Detail`: one line of a tool's output that moves the progress on. A terminal shows
both as they come; plain output (a log, CI) shows the steps only, the details going to the
build's log file with the rest of the tools' output."""

from __future__ import annotations

from collections.abc import Callable

ProgressCallback = Callable[[str, float | None], None]


class Detail(str):
    """A progress message that repeats a line of a tool's output rather than naming a step."""

    __slots__ = ()


def is_step(message: str) -> bool:
    return not isinstance(message, Detail)


def ignore_progress(message: str, fraction: float | None) -> None:
    """A ProgressCallback that drops everything."""


def scaled(on_progress: ProgressCallback, start: float, end: float) -> ProgressCallback:
    """A callback for one phase of a build: its fractions 0..1 are mapped onto start..end."""

    def report(message: str, fraction: float | None) -> None:
        if fraction is None:
            on_progress(message, None)
        else:
            on_progress(message, start + (end - start) * min(max(fraction, 0.0), 1.0))

    return report
