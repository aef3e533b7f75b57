"""``dockworker stacks``: the stack images."""

from __future__ import annotations

import sys
import time
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Column, Table

from ..errors import ClientError, TaskSetupError
from ..settings import load_settings
from .common import DataDir, JsonOpt, err, out

stacks_app = typer.Typer(help="Build and list stack images.", no_args_is_help=True)


@stacks_app.command("list")
def stacks_list(as_json: JsonOpt = False) -> None:
    """The stacks dockworker knows, and which are built on this engine."""
    from ..engine import DockerEngine
    from ..stacks import STACKS, stack_status

    engine = DockerEngine()
    rows: list[dict[str, Any]] = [
        {
            "name": s.name,
            "version": s.version,
            "image": s.image,
            "status": stack_status(s, engine),
            "size_mb": round((engine.image_size(s.image) or 0) / 1e6, 1),
            "runtimes": s.runtimes,
            "description": s.description,
        }
        for s in STACKS.values()
    ]
    if as_json:
        out.print_json(data=rows)
        return
    table = Table(
        Column("name", no_wrap=True),
        Column("version", no_wrap=True),
        Column("image", no_wrap=True),
        Column("status", no_wrap=True),
        Column("size MB", justify="right", no_wrap=True),
        "runtimes",
        "description",
    )
    for row in rows:
        table.add_row(
            *(str(row[k]) for k in ("name", "version", "image", "status", "size_mb")),
            ", ".join(row["runtimes"]),
            str(row["description"]),
        )
    out.print(table)


@stacks_app.command("build")
def stacks_build(
    names: Annotated[list[str] | None, typer.Argument(help="Stacks to build")] = None,
    all_stacks: Annotated[bool, typer.Option("--all", help="Build every stack")] = False,
    force: Annotated[bool, typer.Option(help="Rebuild even when up to date")] = False,
    data_dir: DataDir = None,
) -> None:
    """Build stack images offline from Debian packages (busybox from the host's busybox-static)."""
    from ..engine import DockerEngine
    from ..stacks import STACKS, build_stack, get_stack

    if all_stacks:
        selected = list(STACKS.values())
    elif names:
        selected = [get_stack(n) for n in names]
    else:
        raise ClientError("name the stacks to build, or pass --all")
    settings = load_settings(data_dir=data_dir)
    engine = DockerEngine()
    columns = (
        TextColumn("{task.fields[stack]:<10}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
    )
    with Progress(*columns, console=err, transient=False) as progress:
        for stack in selected:
            bar = progress.add_task("starting", total=1.0, stack=stack.name)

            def report(message: str, fraction: float | None, bar: Any = bar, name: str = stack.name) -> None:
                progress.update(bar, description=message[:70], completed=fraction)
                if not sys.stderr.isatty():
                    err.print(f"{name}: {message}" + (f" ({fraction:.0%})" if fraction is not None else ""))

            started = time.monotonic()
            built = build_stack(
                stack, engine, cache_dir=settings.data_dir / "stack-cache", force=force, on_progress=report
            )
            verdict = f"built in {time.monotonic() - started:.0f} s" if built else "up to date"
            progress.update(bar, completed=1.0, description=verdict)


@stacks_app.command("rm")
def stacks_rm(
    names: Annotated[list[str], typer.Argument(help="Stacks whose image to remove")],
    force: Annotated[
        bool, typer.Option(help="Remove even if stopped containers still use the image")
    ] = False,
) -> None:
    """Remove stack images from this engine (build them again with 'dockworker stacks build')."""
    from ..engine import DockerEngine
    from ..stacks import get_stack

    stacks = [get_stack(name) for name in names]
    engine = DockerEngine()
    for stack in stacks:
        if engine.image_id(stack.image) is None:
            out.print(f"{stack.image} is not built")
            continue
        try:
            engine.remove_image(stack.image, force=force)
        except TaskSetupError as exc:
            hint = "" if force else " (--force removes it anyway)"
            raise ClientError(f"cannot remove {stack.image}: {exc.message}{hint}") from exc
        out.print(f"removed {stack.image}")
