"""The README's main command, ``bash scripts/demo.sh``, on a machine already set up: with
DEMO_EXIT=1 it ends by itself, twice in a row, and leaves no container behind."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from dockworker.store import open_store

from .support import clean_env, free_port

pytestmark = [pytest.mark.docker, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
DEMO_TIMEOUT_S = 300


def installation_containers(installation_id: str) -> list[str]:
    docker = shutil.which("docker")
    assert docker is not None, "the demo's machine has the docker CLI (scripts/setup.sh)"
    found = subprocess.run(
        [docker, "ps", "-a", "-q", "--filter", f"label=dockworker.installation={installation_id}"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return found.stdout.split()


@pytest.mark.timeout(2 * DEMO_TIMEOUT_S + 60)
def test_the_demo_ends_by_itself_twice_and_leaves_no_container(engine: object, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    env = clean_env(DEMO_EXIT="1", DOCKWORKER_DATA_DIR=str(data_dir), DOCKWORKER_PORT=str(free_port()))
    for run in (1, 2):
        result = subprocess.run(
            ["bash", str(REPO / "scripts" / "demo.sh")],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=DEMO_TIMEOUT_S,
            check=False,
        )
        assert result.returncode == 0, f"run {run}:\n{result.stderr[-3000:]}"
        assert "Hello, Ada!" in result.stdout
        assert "status: error" in result.stdout and "msg: exit code 3" in result.stdout
        assert "Traceback" not in result.stderr
    store = open_store(f"sqlite:///{data_dir / 'dockworker.db'}")
    try:
        installation = store.installation_id()
    finally:
        store.close()
    assert installation_containers(installation) == [], "every task's container carries this label"
