"""``dockworker stacks``: the stack images."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ..errors import ClientError, DockworkerError, TaskSetupError
from ..settings import load_settings
from . import output
from .common import DataDir, JsonOpt, command_group
from .output import Col

if TYPE_CHECKING:
    from ..engine import DockerEngine
    from ..stacks import Stack

stacks_app = command_group("Build and list stack images.", no_args_is_help=True)


@stacks_app.command("list")
def stacks_list(as_json: JsonOpt = False) -> None:
    """The stacks dockworker knows, and which are built on this engine.

    Not at a terminal: one stack a line, tab-separated.
    Fields: name, version, status, size MB, runtimes, image, description."""
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
    output.table(
        [
            Col("name", lambda r: r["name"]),
            Col("version", lambda r: r["version"]),
            Col("status", lambda r: r["status"]),
            Col("size MB", lambda r: r["size_mb"], right=True),
            Col("runtimes", lambda r: r["runtimes"], drop=2),
            Col("image", lambda r: r["image"], drop=1),
            Col("description", lambda r: r["description"], flex=True, min_width=16),
        ],
        rows,
        as_json=as_json,
    )


@stacks_app.command("build")
def stacks_build(
    names: Annotated[list[str] | None, typer.Argument(help="Stacks to build")] = None,
    all_stacks: Annotated[bool, typer.Option("--all", help="Build every stack")] = False,
    force: Annotated[bool, typer.Option(help="Rebuild even when up to date")] = False,
    data_dir: DataDir = None,
    as_json: JsonOpt = False,
) -> None:
    """Build stack images offline from Debian packages (busybox from the host's busybox-static).

    The tools' whole output goes to DATA_DIR/stack-cache/logs/NAME.log.
    A terminal shows a progress bar per stack; other output gets one line per step."""
    from ..engine import DockerEngine
    from ..stacks import STACKS, get_stack

    if all_stacks:
        selected = list(STACKS.values())
    elif names:
        selected = [get_stack(n) for n in names]
    else:
        raise ClientError("name the stacks to build, or pass --all")
    settings = load_settings(data_dir=data_dir)
    cache_dir = settings.data_dir / "stack-cache"
    engine = DockerEngine()
    build = _build_with_bars if sys.stderr.isatty() else _build_with_lines
    results = build(selected, engine, cache_dir, force)
    if as_json:
        output.print_json(results)


def _build_one(
    stack: Stack,
    engine: DockerEngine,
    cache_dir: Path,
    force: bool,
    report: Callable[[str, float | None], None],
) -> dict[str, Any]:
    """Build one stack with its tools' output in its log file; the result as --json shows it."""
    from ..stacks import build_stack
    from ..stacks.commands import build_log, log_step

    def step(message: str, fraction: float | None) -> None:
        log_step(message)
        report(message, fraction)

    log = cache_dir / "logs" / f"{stack.name}.log"
    started = time.monotonic()
    try:
        with build_log(log):
            built = build_stack(stack, engine, cache_dir=cache_dir, force=force, on_progress=step)
    except DockworkerError as exc:  # same family, with the log's place
        raise type(exc)(
            f"building the {stack.name} stack failed: {exc.message}\nThe whole build log: {log}"
        ) from exc
    return {
        "name": stack.name,
        "image": stack.image,
        "built": built,
        "seconds": round(time.monotonic() - started, 1),
        "log": str(log),
    }


def _build_with_lines(
    selected: list[Stack], engine: DockerEngine, cache_dir: Path, force: bool
) -> list[dict[str, Any]]:
    from ..stacks.progress import is_step

    results = []
    for stack in selected:

        def report(message: str, fraction: float | None, name: str = stack.name) -> None:
            if is_step(message):
                output.note(f"{name}: {message}")

        results.append(_build_one(stack, engine, cache_dir, force, report))
    return results


def _build_with_bars(
    selected: list[Stack], engine: DockerEngine, cache_dir: Path, force: bool
) -> list[dict[str, Any]]:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    width = max(len(stack.name) for stack in selected)
    columns = (
        TextColumn(f"{{task.fields[stack]:<{width}}}"),
        BarColumn(bar_width=20),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
    )
    results = []
    with Progress(*columns, console=Console(stderr=True), transient=False) as progress:
        for stack in selected:
            bar = progress.add_task("starting", total=1.0, stack=stack.name)

            def report(message: str, fraction: float | None, bar: Any = bar) -> None:
                progress.update(bar, description=output.flat(message), completed=fraction)

            try:
                result = _build_one(stack, engine, cache_dir, force, report)
            except DockworkerError:
                progress.update(bar, description="failed")
                raise
            verdict = f"built in {result['seconds']:.0f} s" if result["built"] else "up to date"
            progress.update(bar, completed=1.0, description=verdict)
            results.append(result)
    return results


@stacks_app.command("rm")
def stacks_rm(
    names: Annotated[list[str], typer.Argument(help="Stacks whose image to remove")],
    force: Annotated[
        bool, typer.Option(help="Remove even if stopped containers still use the image")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Remove stack images from this engine (build them again with 'dockworker stacks build')."""
    from ..engine import DockerEngine
    from ..stacks import get_stack

    stacks = [get_stack(name) for name in names]
    engine = DockerEngine()
    results = []
    for stack in stacks:
        if engine.image_id(stack.image) is None:
            results.append({"name": stack.name, "image": stack.image, "removed": False})
            if not as_json:
                output.line(f"{stack.image} is not built")
            continue
        try:
            engine.remove_image(stack.image, force=force)
        except TaskSetupError as exc:
            hint = "" if force else " (--force removes it anyway)"
            raise ClientError(f"cannot remove {stack.image}: {exc.message}{hint}") from exc
        results.append({"name": stack.name, "image": stack.image, "removed": True})
        if not as_json:
            output.line(f"removed {stack.image}")
    if as_json:
        output.print_json(results)
