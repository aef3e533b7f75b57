"""Building stack images on the local engine. An image is imported from a rootfs tarball
(``docker import``), so no registry is needed; its labels record the recipe it was built
from, which is how an up-to-date image is recognised and left alone."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

from ..engine.adapter import DockerEngine
from ..errors import TaskSetupError
from . import busybox
from .catalog import Stack
from .commands import STANDARD_PATH
from .debian import build_debian_rootfs
from .progress import ProgressCallback, ignore_progress, scaled
from .rootfs import scratch_dir, write_rootfs_tar

__all__ = ["ProgressCallback", "build_stack", "image_changes", "stack_status"]

STACK_LABEL = "dockworker.stack"
VERSION_LABEL = "dockworker.stack.version"
RECIPE_LABEL = "dockworker.stack.recipe"

_DEFAULT_COMMANDS = {"busybox": '["sh"]', "debian": '["bash"]'}


def stack_status(stack: Stack, engine: DockerEngine) -> str:
    """One of "built" (the image matches the recipe), "outdated" (it does not) or "missing"."""
    labels = engine.image_labels(stack.image)
    if labels is None:
        return "missing"
    return "built" if labels.get(RECIPE_LABEL) == stack.recipe_digest() else "outdated"


def build_stack(
    stack: Stack,
    engine: DockerEngine,
    *,
    cache_dir: Path,
    force: bool = False,
    on_progress: ProgressCallback | None = None,
) -> bool:
    """Build the stack's image unless an up-to-date one exists (or force). True if it built."""
    report = on_progress or ignore_progress
    if not force and stack_status(stack, engine) == "built":
        report(f"{stack.image} is up to date", 1.0)
        return False
    started = time.monotonic()
    replaced_image = engine.image_id(stack.image)
    report(f"building {stack.image}", 0.0)
    with scratch_dir(cache_dir, f"build-{stack.name}-") as work:
        tarball = _write_rootfs_tarball(stack, work, cache_dir, scaled(report, 0.0, 0.9))
        report(f"importing {stack.image} into the engine", 0.9)
        with tarball.open("rb") as tar:
            engine.import_image(
                tar, repository=stack.repository, tag=stack.version, changes=image_changes(stack)
            )
    _remove_replaced_image(engine, replaced_image, stack)
    report(f"built {stack.image} in {time.monotonic() - started:.1f}s", 1.0)
    return True


def image_changes(stack: Stack) -> list[str]:
    """The Dockerfile instructions applied on import."""
    return [
        f"LABEL {STACK_LABEL}={stack.name}",
        f"LABEL {VERSION_LABEL}={stack.version}",
        f"LABEL {RECIPE_LABEL}={stack.recipe_digest()}",
        f"ENV PATH={STANDARD_PATH}",
        "ENV LANG=C.UTF-8",
        *(f"ENV {name}={value}" for name, value in stack.env),
        f"USER {stack.user}",
        "WORKDIR /",
        f"CMD {_DEFAULT_COMMANDS[stack.base]}",
    ]


def _write_rootfs_tarball(stack: Stack, work: Path, cache_dir: Path, on_progress: ProgressCallback) -> Path:
    tarball = work / "rootfs.tar"
    if stack.base == "busybox":
        on_progress(f"assembling the rootfs from {busybox.HOST_BUSYBOX}", 0.0)
        with tarball.open("wb") as out:
            busybox.write_busybox_rootfs(out, busybox=busybox.HOST_BUSYBOX, uid=stack.uid, gid=stack.gid)
        return tarball
    root = build_debian_rootfs(stack, work, cache_dir=cache_dir, on_progress=scaled(on_progress, 0.0, 0.9))
    on_progress("writing the rootfs tarball", 0.9)
    with tarball.open("wb") as out:
        write_rootfs_tar(root, out)
    return tarball


def _remove_replaced_image(engine: DockerEngine, replaced_image: str | None, stack: Stack) -> None:
    """The previous build of the stack, now untagged, is removed unless a container still uses it."""
    if replaced_image is None or replaced_image == engine.image_id(stack.image):
        return
    # Still used by a container: it stays, dangling, for `docker image prune`.
    with contextlib.suppress(TaskSetupError):
        engine.remove_image(replaced_image)
