"""Stacks: the language environments tasks run in, built as local images without a registry.

The builders (``build``) are imported on first use: the API reads the catalogue and must not
load the Docker SDK with it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .catalog import RUNTIME_ALIASES, STACKS, Stack, get_stack, stack_for_runtime

if TYPE_CHECKING:
    from .build import ProgressCallback, build_stack, stack_status

__all__ = [
    "RUNTIME_ALIASES",
    "STACKS",
    "ProgressCallback",
    "Stack",
    "build_stack",
    "get_stack",
    "stack_for_runtime",
    "stack_status",
]

_FROM_BUILD = frozenset({"ProgressCallback", "build_stack", "stack_status"})


def __getattr__(name: str) -> object:
    if name in _FROM_BUILD:
        from . import build

        return getattr(build, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
