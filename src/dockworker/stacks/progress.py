"""Progress reporting for stack builds: a callback taking a human message and the fraction of
the whole build done (0..1, or None when unknown)."""

from __future__ import annotations

from collections.abc import Callable

ProgressCallback = Callable[[str, float | None], None]


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
