"""Layering: what importing a package loads. Each check runs in a fresh interpreter."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "dockworker"


def _loaded_after(statement: str) -> set[str]:
    script = f"import sys\n{statement}\nprint('\\n'.join(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return set(done.stdout.split())


def test_the_api_does_not_load_the_docker_sdk() -> None:
    loaded = _loaded_after("import dockworker.api")
    assert "dockworker.api.app" in loaded
    assert not {m for m in loaded if m == "docker" or m.startswith(("docker.", "dockworker.engine"))}


@pytest.mark.parametrize("module", ["sql", "sqlite", "postgres"])
def test_the_store_imports_neither_scheduler_runner_nor_api(module: str) -> None:
    loaded = _loaded_after(f"import dockworker.store.{module}")
    assert not {
        m for m in loaded if m.startswith(("dockworker.scheduler", "dockworker.runner", "dockworker.api"))
    }


@pytest.mark.parametrize("package", ["api", "cli"])
def test_api_and_cli_import_only_the_store_interface(package: str) -> None:
    """``from ..store import ...`` (the interface: ``Store``, its errors), never a module inside."""
    found = []
    for path in sorted((SRC / package).rglob("*.py")):
        for line in path.read_text().splitlines():
            if re.search(r"(from|import) (\.\.|dockworker\.)store\.", line):
                found.append(f"{path.name}: {line.strip()}")
    assert found == []


def test_the_cli_starts_without_the_heavy_libraries() -> None:
    """A client command (``status``, ``queue``...) must start in a fraction of a second: the
    store, the engine's SDK, the HTTP servers and the cryptography are imported where used."""
    loaded = _loaded_after("import dockworker.cli.main")
    heavy = (
        "sqlalchemy",
        "docker",
        "httpx",
        "httpx2",
        "fastapi",
        "uvicorn",
        "cryptography",
        "alembic",
        "psycopg",
    )
    assert not {m for m in loaded if m.split(".")[0] in heavy}
