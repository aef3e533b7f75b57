"""``dockworker stacks``: the stack images."""

from __future__ import annotations

import sys
import time
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..errors import ClientError
from ..settings import load_settings
from .common import DataDir, JsonOpt, err, out

stacks_app = typer.Typer(help="Build and list stack images.", no_args_is_help=True)


@stacks_app.command("list")
def stacks_list(as_json: JsonOpt = False) -> None:
    """The stacks dockworker knows, and which are built on this engine."""
    from ..engine import DockerEngine
    from ..stacks import STACKS, stack_status

    engine = DockerEngine()
    rows = [
        {
            "name": s.name,
            "version": s.version,
            "image": s.image,
            "status": stack_status(s, engine),
            "size_mb": round((engine.image_size(s.image) or 0) / 1e6, 1),
            "description": s.description,
        }
        for s in STACKS.values()
    ]
    if as_json:
        out.print_json(data=rows)
        return
    table = Table("name", "version", "image", "status", "size MB", "description")
    for row in rows:
        table.add_row(
            *(str(row[k]) for k in ("name", "version", "image", "status", "size_mb", "description"))
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
