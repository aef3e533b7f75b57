"""The container runtime: the engine contract (``base.Engine``) and its value types, and the
Docker adapter, the only module that talks to Docker."""

from __future__ import annotations

from .adapter import DockerEngine
from .base import Engine
from .types import UNKNOWN_USAGE, Bind, ContainerInfo, ContainerSpec, ExitInfo, ResourceUsage

__all__ = [
    "UNKNOWN_USAGE",
    "Bind",
    "ContainerInfo",
    "ContainerSpec",
    "DockerEngine",
    "Engine",
    "ExitInfo",
    "ResourceUsage",
]
