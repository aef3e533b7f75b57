"""Persistence. ``Store`` is the interface; one module per SQL dialect implements the parts
that differ (the claim statement, connection setup, wake-ups)."""

from __future__ import annotations

from .base import Cadence, CadenceOf, Store, open_store
from .errors import StorageFull, StoreUnavailable

__all__ = ["Cadence", "CadenceOf", "StorageFull", "Store", "StoreUnavailable", "open_store"]
