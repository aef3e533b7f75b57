"""Options and argument readers that every command module shares."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from ..errors import ClientError

DataDir = Annotated[
    Path | None, typer.Option("--data-dir", help="Where the database, code cache and iron.json live")
]
ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="iron.json to read (default: IronWorker's search: ~/.iron.json, IRON_* variables, "
        "./iron.json or DATA_DIR/iron.json, DOCKWORKER_IRON_JSON)",
    ),
]
StoreOpt = Annotated[
    str | None,
    typer.Option(
        "--store",
        help="Store URL: postgresql://user@host/db for several hosts (default: SQLite in DATA_DIR); "
        "or DOCKWORKER_STORE_URL",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of text")]
Seconds = Annotated[int | None, typer.Option(min=1, help="Seconds the task may run")]
# How a code package starts (upload and run-local alike).
StackOpt = Annotated[str | None, typer.Option(help="Stack to run in (see 'dockworker stacks list')")]
ImageOpt = Annotated[str | None, typer.Option(help="Docker image to run in instead of a stack")]
RuntimeOpt = Annotated[
    str | None, typer.Option(help="Legacy IronWorker runtime (python, node, ...), with --file-name")
]
FileNameOpt = Annotated[str | None, typer.Option(help="Legacy: the file the runtime runs")]
CommandOpt = Annotated[str | None, typer.Option(help="Command to run, e.g. 'python3 hello.py'")]
EnvOpt = Annotated[list[str] | None, typer.Option("--env", "-e", help="KEY=VALUE (repeatable)")]

_stdin_taken: list[str] = []

# Help and usage errors in rich panels at a terminal; plain text (no boxes, no wrapping to an
# assumed width) in pipes and files.
HELP_STYLE: Literal["rich"] | None = (
    "rich" if all(stream is not None and stream.isatty() for stream in (sys.stdout, sys.stderr)) else None
)


def command_group(help_text: str, **options: Any) -> typer.Typer:
    return typer.Typer(help=help_text, rich_markup_mode=HELP_STYLE, **options)


def read_arg(value: str | None, option: str = "the option", *, dash_is_stdin: bool = False) -> str | None:
    """An option's value: as given, ``@FILE``'s content, or ``@-`` (and with ``dash_is_stdin``
    a lone ``-``) for standard input."""
    if value is None:
        return None
    if value == "@-" or (dash_is_stdin and value == "-"):
        if _stdin_taken:
            raise ClientError(f"{option} and {_stdin_taken[0]} cannot both read standard input")
        _stdin_taken.append(option)
        return sys.stdin.read() if sys.stdin is not None else ""
    if value.startswith("@"):
        path = Path(value[1:])
        try:
            return path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise ClientError(f"{option}: cannot read {path}: {exc}") from exc
    return value


def parse_env(pairs: list[str] | None) -> dict[str, str]:
    """--env KEY=VALUE options as a mapping."""
    env = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ClientError(f"--env takes KEY=VALUE, got {pair!r}")
        env[key] = value
    return env


def parse_secret_env(pairs: list[str] | None) -> dict[str, str]:
    """--secret-env KEY=VALUE or KEY=@FILE (the value read from FILE keeps it out of the process
    list and the shell's history). Errors never repeat the value."""
    env = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ClientError("--secret-env takes KEY=VALUE or KEY=@FILE")
        env[key] = read_arg(value, f"--secret-env {key}") or ""
    return env
