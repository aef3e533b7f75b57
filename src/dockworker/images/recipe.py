"""What the service images are made of: one root filesystem (Debian, Python, a virtualenv with
dockworker and its pinned dependencies) imported twice, each time with its own entry point."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from .. import __version__
from ..errors import ClientError
from ..stacks.catalog import DEBIAN_SUITE, DEBIAN_VARIANT

# Bump when the way the service images are built changes, so that both are rebuilt.
IMAGE_BUILDER_VERSION = 1
# busybox-static: the one-stream shell that task containers start their command with (contract.py)
PACKAGES = ("python3", "python3-venv", "ca-certificates", "busybox-static")
VENV = "/opt/dockworker"
DATA_DIR = "/var/lib/dockworker"
UID = GID = 1000
USER = f"{UID}:{GID}"
PORT = 8080

RECIPE_LABEL = "dockworker.image.recipe"
ROLE_LABEL = "dockworker.image.role"


@dataclass(frozen=True, kw_only=True)
class ServiceImage:
    role: str
    description: str
    command: tuple[str, ...]
    exposed_port: int | None = None

    @property
    def repository(self) -> str:
        return f"dockworker/{self.role}"

    @property
    def image(self) -> str:
        return f"{self.repository}:{__version__}"


SERVICE_IMAGES: dict[str, ServiceImage] = {
    image.role: image
    for image in (
        ServiceImage(
            role="server",
            description="the API server, scheduler and housekeeping (dockworker server)",
            command=("server", "--host", "0.0.0.0", "--port", str(PORT)),
            exposed_port=PORT,
        ),
        ServiceImage(
            role="runner",
            description="a task runner (dockworker runner); needs the engine's socket",
            command=("runner",),
        ),
    )
}


def get_service_image(role: str) -> ServiceImage:
    try:
        return SERVICE_IMAGES[role]
    except KeyError:
        known = ", ".join(SERVICE_IMAGES)
        raise ClientError(f"unknown image {role!r}: the images are {known}") from None


def wheels_digest(wheels: list[Path]) -> str:
    """The content of a set of wheels, whatever their order or directory."""
    digest = hashlib.sha256()
    for wheel in sorted(wheels, key=lambda p: p.name):
        digest.update(wheel.name.encode() + b"\0" + hashlib.sha256(wheel.read_bytes()).digest())
    return digest.hexdigest()


def recipe_digest(image: ServiceImage, wheels_content: str) -> str:
    recipe = {
        "builder": IMAGE_BUILDER_VERSION,
        "role": image.role,
        "command": list(image.command),
        "packages": sorted(PACKAGES),
        "suite": DEBIAN_SUITE,
        "variant": DEBIAN_VARIANT,
        "user": USER,
        "wheels": wheels_content,
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()


BASE_REPOSITORY = "dockworker/service-base"


def base_changes(wheels_content: str) -> list[str]:
    """The Dockerfile instructions applied when the shared root filesystem is imported."""
    return [
        f"LABEL {RECIPE_LABEL}=base-{wheels_content}",
        f"ENV PATH={VENV}/bin:/usr/local/bin:/usr/bin:/bin",
        "ENV LANG=C.UTF-8",
        "ENV PYTHONUNBUFFERED=1",
        f"ENV DOCKWORKER_DATA_DIR={DATA_DIR}",
        f"USER {USER}",
        f"WORKDIR {DATA_DIR}",
        f"VOLUME {DATA_DIR}",
    ]


def role_dockerfile(image: ServiceImage, base: str, recipe: str) -> str:
    """A role's image on top of the shared one: metadata only, so both share its one layer."""
    lines = [
        f"FROM {base}",
        f"LABEL {ROLE_LABEL}={image.role} {RECIPE_LABEL}={recipe}",
        f'ENTRYPOINT ["{VENV}/bin/dockworker"]',
        "CMD " + json.dumps(list(image.command)),
    ]
    if image.exposed_port is not None:
        lines.append(f"EXPOSE {image.exposed_port}")
    return "\n".join(lines) + "\n"
