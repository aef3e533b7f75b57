"""Pieces every command module shares."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

out = Console()
err = Console(stderr=True)

DataDir = Annotated[
    Path | None, typer.Option("--data-dir", help="Where the database, code cache and iron.json live")
]
ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", help="iron.json to read (default: ./iron.json, then DATA_DIR/iron.json)"),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of text")]
