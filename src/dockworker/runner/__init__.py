"""The task lifecycle: claim, run in a fresh container, report, clean up.

``Runner`` is imported on first use: the API imports this package's engine-free modules
(``archive``) and must not load the Docker SDK with it."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .runner import Runner

__all__ = ["Runner"]


def __getattr__(name: str) -> object:
    if name == "Runner":
        from .runner import Runner

        return Runner
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
