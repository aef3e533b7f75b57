"""Stacks: the language environments tasks run in, built as local images without a registry."""

from __future__ import annotations

from .build import ProgressCallback, build_stack, stack_status
from .catalog import RUNTIME_ALIASES, STACKS, Stack, get_stack, stack_for_runtime

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
