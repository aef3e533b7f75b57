"""Pieces every command module shares."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from ..errors import ClientError

out = Console()
err = Console(stderr=True)

DataDir = Annotated[
    Path | None, typer.Option("--data-dir", help="Where the database, code cache and iron.json live")
]
ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", help="iron.json to read (default: ./iron.json, then DATA_DIR/iron.json)"),
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


def read_arg(value: str | None) -> str | None:
    if value is not None and value.startswith("@"):
        path = Path(value[1:])
        try:
            return path.read_text()
        except OSError as exc:
            raise ClientError(f"cannot read {path}: {exc}") from exc
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
        env[key] = read_arg(value) or ""
    return env
