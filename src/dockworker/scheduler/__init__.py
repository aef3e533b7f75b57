"""Time-driven work that belongs to no single runner."""

from __future__ import annotations

from .housekeeping import Housekeeper
from .scheduler import Scheduler

__all__ = ["Housekeeper", "Scheduler"]
