"""Building the service images on the local engine: the wheels first (their content is part of
the recipe, so an image is rebuilt exactly when the code or a pinned dependency changed), then
one Debian root filesystem with a virtualenv, imported once per image with its own entry
point."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tarfile
import time
from pathlib import Path

from .. import __version__
from ..engine.adapter import DockerEngine
from ..errors import TaskSetupError
from ..stacks.commands import run_command
from ..stacks.debian import (
    base_tarball_path,
    debian_mirror,
    ensure_base,
    install_packages,
    make_lean,
    require_root,
)
from ..stacks.progress import ProgressCallback, ignore_progress, scaled
from ..stacks.rootfs import (
    add_worker_account,
    extract_rootfs_tar,
    mounted_proc,
    scratch_dir,
    write_rootfs_tar,
)
from .recipe import (
    BASE_REPOSITORY,
    DATA_DIR,
    GID,
    PACKAGES,
    RECIPE_LABEL,
    UID,
    VENV,
    ServiceImage,
    base_changes,
    recipe_digest,
    role_dockerfile,
)
from .recipe import wheels_digest as digest_of_wheels
from .wheels import collect_wheels, project_root

WHEELS_INSIDE = "tmp/dockworker-wheels"


def service_image_status(image: ServiceImage, engine: DockerEngine, recipe: str) -> str:
    """One of "built" (the image matches the recipe), "outdated" (it does not) or "missing"."""
    labels = engine.image_labels(image.image)
    if labels is None:
        return "missing"
    return "built" if labels.get(RECIPE_LABEL) == recipe else "outdated"


def build_service_images(
    images: list[ServiceImage],
    engine: DockerEngine,
    *,
    cache_dir: Path,
    force: bool = False,
    on_progress: ProgressCallback | None = None,
) -> list[ServiceImage]:
    """Build the images that are missing or outdated (all of them with force); returns those
    built. ``cache_dir`` is the stacks' cache: the Debian base and apt's downloads are shared."""
    report = on_progress or ignore_progress
    require_root()
    started = time.monotonic()
    with scratch_dir(cache_dir, "images-") as work:
        report("building the dockworker wheel and collecting its pinned dependencies", 0.0)
        wheels = collect_wheels(project_root(), work, on_line=lambda line: report(f"pip: {line[:100]}", None))
        content = digest_of_wheels(wheels)
        recipes = {image.role: recipe_digest(image, content) for image in images}
        wanted = [
            image
            for image in images
            if force or service_image_status(image, engine, recipes[image.role]) != "built"
        ]
        for image in images:
            if image not in wanted:
                report(f"{image.image} is up to date", None)
        if not wanted:
            report("every image is up to date", 1.0)
            return []
        base = f"{BASE_REPOSITORY}:{__version__}"
        replaced = {engine.image_id(ref) for ref in (base, *(image.image for image in wanted))} - {None}
        root = _make_rootfs(work, wheels, cache_dir, scaled(report, 0.15, 0.8))
        report("writing the rootfs tarball", 0.8)
        tarball = work / "rootfs.tar"
        with tarball.open("wb") as out:
            write_rootfs_tar(root, out)
        report(f"importing {base} into the engine", 0.9)
        with tarball.open("rb") as tar:
            engine.import_image(
                tar, repository=BASE_REPOSITORY, tag=__version__, changes=base_changes(content)
            )
        for image in wanted:
            report(f"tagging {image.image}", 0.97)
            engine.build_image(_context(role_dockerfile(image, base, recipes[image.role])), tag=image.image)
        _remove_replaced(engine, replaced, [base, *(image.image for image in images)])
    report(f"built {', '.join(i.image for i in wanted)} in {time.monotonic() - started:.1f} s", 1.0)
    return wanted


def _make_rootfs(work: Path, wheels: list[Path], cache_dir: Path, report: ProgressCallback) -> Path:
    mirror = debian_mirror()
    base_needed = not base_tarball_path(cache_dir).exists()
    install_start = 0.4 if base_needed else 0.05
    base = ensure_base(cache_dir, mirror, scaled(report, 0.0, install_start))
    report("unpacking the base system", install_start)
    root = work / "rootfs"
    extract_rootfs_tar(base, root)
    install_packages(root, PACKAGES, mirror, scaled(report, install_start, 0.7), apt_cache=cache_dir / "apt")
    report(f"installing dockworker and its dependencies into {VENV}", 0.7)
    inside = root / WHEELS_INSIDE
    inside.mkdir(parents=True)
    for wheel in wheels:
        shutil.copy2(wheel, inside / wheel.name)
    with mounted_proc(root):
        run_command(["chroot", str(root), "python3", "-m", "venv", VENV])
        run_command(
            [
                "chroot",
                str(root),
                f"{VENV}/bin/pip",
                "install",
                "--no-index",
                "--no-cache-dir",
                "--disable-pip-version-check",
                "--progress-bar",
                "off",
                "--find-links",
                f"/{WHEELS_INSIDE}",
                "dockworker",
            ],
            on_line=lambda line: report(f"pip: {line[:100]}", None),
        )
    shutil.rmtree(inside)
    report("trimming the rootfs", 0.95)
    make_lean(root)
    add_worker_account(root, UID, GID)
    data_dir = root / DATA_DIR.lstrip("/")
    data_dir.mkdir(parents=True, exist_ok=True)
    os.chown(data_dir, UID, GID)
    data_dir.chmod(0o750)
    return root


def _remove_replaced(engine: DockerEngine, replaced: set[str | None], current: list[str]) -> None:
    """Earlier builds, now untagged, are removed unless a container still uses them."""
    in_use = {engine.image_id(ref) for ref in current}
    for image_id in replaced - in_use:
        if image_id is not None:
            with contextlib.suppress(TaskSetupError):
                engine.remove_image(image_id, force=False)


def _context(dockerfile: str) -> io.BytesIO:
    """A build context holding only a Dockerfile."""
    data = dockerfile.encode()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        member = tarfile.TarInfo("Dockerfile")
        member.size = len(data)
        tar.addfile(member, io.BytesIO(data))
    buffer.seek(0)
    return buffer
