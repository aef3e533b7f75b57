"""The task engine a runner uses, as its settings choose: the Docker engine, or the OCI backend
over the Docker engine's images."""

from __future__ import annotations

from ...settings import Settings
from ..adapter import DockerEngine
from ..base import Engine
from .engine import OciEngine


def open_task_engine(settings: Settings, *, pool_size: int = 32) -> Engine:
    docker = DockerEngine(settings.docker_host, pool_size=pool_size)
    if settings.runtime == "docker":
        return docker
    try:
        return OciEngine(settings.data_dir / "oci", docker, runtime=settings.oci_runtime, close_docker=True)
    except BaseException:
        docker.close()
        raise
