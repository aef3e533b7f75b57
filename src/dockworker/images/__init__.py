"""dockworker itself shipped as images: ``dockworker/server`` and ``dockworker/runner``, built
offline on the local engine from Debian packages plus the project's wheel and its pinned
dependencies, like the stacks."""

from __future__ import annotations

from .build import build_service_images, service_image_status
from .recipe import SERVICE_IMAGES, ServiceImage, get_service_image

__all__ = [
    "SERVICE_IMAGES",
    "ServiceImage",
    "build_service_images",
    "get_service_image",
    "service_image_status",
]
