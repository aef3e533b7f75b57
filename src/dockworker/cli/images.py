"""``dockworker images``: dockworker itself as images (``dockworker/server``, ``dockworker/runner``)."""

from __future__ import annotations

from typing import Annotated

import typer

from ..settings import load_settings
from . import output
from .common import DataDir, JsonOpt, command_group

images_app = command_group("Build dockworker's own images (server, runner).", no_args_is_help=True)


@images_app.command("build")
def images_build(
    roles: Annotated[list[str] | None, typer.Argument(help="server, runner (default: both)")] = None,
    force: Annotated[bool, typer.Option(help="Rebuild even when up to date")] = False,
    data_dir: DataDir = None,
) -> None:
    """Build dockworker/server and dockworker/runner offline from Debian packages, this checkout's
    wheel and the dependency versions installed here (one line per step on stderr)."""
    from ..engine import DockerEngine
    from ..images import SERVICE_IMAGES, build_service_images, get_service_image

    selected = [get_service_image(role) for role in roles] if roles else list(SERVICE_IMAGES.values())
    settings = load_settings(data_dir=data_dir)
    last: list[str] = []

    def report(message: str, fraction: float | None) -> None:
        # pip's lines come without a fraction: shown, but not repeated when unchanged.
        if last and last[-1] == message:
            return
        last[:] = [message]
        share = f"{fraction:4.0%} " if fraction is not None else "     "
        output.note(f"images: {share}{message}")

    built = build_service_images(
        selected, DockerEngine(), cache_dir=settings.data_dir / "stack-cache", force=force, on_progress=report
    )
    for image in selected:
        output.line(f"{image.image}\t{'built' if image in built else 'up to date'}")


@images_app.command("list")
def images_list(as_json: JsonOpt = False) -> None:
    """The service images and whether they are on this engine."""
    from ..engine import DockerEngine
    from ..images import SERVICE_IMAGES

    engine = DockerEngine()
    rows = [
        {
            "role": image.role,
            "image": image.image,
            "present": engine.image_id(image.image) is not None,
            "description": image.description,
        }
        for image in SERVICE_IMAGES.values()
    ]
    output.table(
        [
            output.Col("image", lambda row: row["image"]),
            output.Col("present", lambda row: "present" if row["present"] else "missing"),
            output.Col("description", lambda row: row["description"], flex=True, drop=1),
        ],
        rows,
        as_json=as_json,
    )
