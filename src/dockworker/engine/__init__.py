"""The Docker adapter: the only module that talks to the engine."""

from __future__ import annotations

from .adapter import Bind, ContainerInfo, ContainerSpec, DockerEngine, ExitInfo

__all__ = ["Bind", "ContainerInfo", "ContainerSpec", "DockerEngine", "ExitInfo"]
