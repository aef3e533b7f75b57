"""The OCI backend: task containers run through an OCI runtime (crun or runc) directly, from
the Docker engine's images and with the sandbox the engine generates (see docs/oci.md)."""

from __future__ import annotations

from .engine import OciEngine

__all__ = ["OciEngine"]
