"""dockworker: a self-hosted task execution service, one fresh Docker container per task."""

from __future__ import annotations

__version__ = "0.1.0"
