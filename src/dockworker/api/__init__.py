"""The HTTP API: IronWorker REST API v2, wire-compatible."""

from __future__ import annotations

from .app import create_app

__all__ = ["create_app"]
