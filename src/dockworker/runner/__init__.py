"""The task lifecycle: claim, run in a fresh container, report, clean up."""

from __future__ import annotations

from .runner import Runner

__all__ = ["Runner"]
