"""Persistence. ``Store`` is the interface; one module per SQL dialect implements the parts
that differ (the claim statement, connection setup, wake-ups)."""

from __future__ import annotations

from .base import Store, open_store

__all__ = ["Store", "open_store"]
