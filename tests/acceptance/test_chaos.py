"""Chaos with runners attached to the store: one PostgreSQL database, two API servers, three
runner processes and more than a thousand short tasks (some complete, some fail, some time out,
some are cancelled while queued or running). Meanwhile runners are killed with SIGKILL and
restarted, and the Docker engine is restarted once. At the end every task has exactly one
terminal state, none is lost, each task's containers started (counted from the engine's own
event stream) equal its recorded attempts, no container of the installation is left on the
engine, and the queue is empty. The second test runs the same with the runners on the OCI
backend, the OCI runtime as the witness.

The machinery is shared with the remote variant (``test_chaos_remote.py``): the rig
(``rig.py``), the load and the chaos (``chaos_load.py``), the verdict
(``chaos_checks.py``), the run (``chaos_scenario.py``). The report is printed whatever the
outcome. ``DW_CHAOS_SEED`` replays a run's choices (not its timing)."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.oci_fixtures import require_runtime
from tests.pgdb import Databases

from .chaos_load import Disruption
from .chaos_scenario import run_and_report
from .dockerd import (
    ENGINE_START_S,
    EngineRestartFailed,
    engine_not_restartable,
    ensure_engine,
    start_dockerd,
    stop_dockerd,
    wait_engine,
)
from .oci_witness import RUNTIME
from .rig import Report, Rig

pytestmark = [pytest.mark.slow, pytest.mark.docker]

ENGINE_STOP_S = 60.0


def restart_engine(rig: Rig) -> None:
    """SIGTERM to dockerd, started again as scripts/setup.sh starts it; the engine's event
    stream is followed again from the moment it stopped."""
    assert rig.events is not None
    if not rig.events.current_alive():
        raise EngineRestartFailed("the engine event watcher stopped before the engine restart")
    stopped_at = time.time()
    started = time.monotonic()
    pid = stop_dockerd(ENGINE_STOP_S)
    rig.note(f"engine: dockerd {pid} exited {time.monotonic() - started:.1f} s after SIGTERM")
    start_dockerd()
    if not wait_engine(ENGINE_START_S):
        raise EngineRestartFailed(f"the Docker engine did not come back within {ENGINE_START_S} s")
    rig.events.start(since=stopped_at)
    rig.note(f"engine: answering again {time.monotonic() - started:.1f} s after the SIGTERM")


@contextlib.contextmanager
def restartable_rig(pg_databases: Databases, tmp_path: Path, runtime: str = "docker") -> Iterator[Rig]:
    reason = engine_not_restartable()
    if reason is not None:
        message = f"the chaos test restarts the Docker engine: {reason}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    seed = int(os.environ.get("DW_CHAOS_SEED") or time.time())
    made = Rig(tmp_path, pg_databases, Report(seed), runtime=runtime)
    try:
        made.open()
        yield made
    finally:
        try:
            ensure_engine()
        finally:
            made.close()


@pytest.fixture
def rig(engine: object, pg_databases: Databases, tmp_path: Path) -> Iterator[Rig]:
    with restartable_rig(pg_databases, tmp_path) as made:
        yield made


@pytest.fixture
def oci_rig(engine: object, pg_databases: Databases, tmp_path: Path) -> Iterator[Rig]:
    require_runtime(RUNTIME)
    with restartable_rig(pg_databases, tmp_path, runtime="oci") as made:
        yield made


@pytest.mark.timeout(1500)
def test_chaos_every_task_ends_once_and_nothing_is_left(rig: Rig, capsys: pytest.CaptureFixture[str]) -> None:
    run_and_report(rig, Disruption("the Docker engine restarted", restart_engine), capsys)


@pytest.mark.timeout(1500)
def test_chaos_on_the_oci_backend_every_task_ends_once_and_nothing_is_left(
    oci_rig: Rig, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same run with the runners on ``--runtime oci`` (crun): their containers' supervisors
    outlive a killed runner, whose spare (parked) supervisors the restarted one sweeps; the
    Docker engine's restart does not concern them (they use the images already unpacked). The
    OCI runtime is the witness (``oci_witness.py``): the containers crun was asked to run equal
    the recorded attempts, and once the runners are stopped nothing of their OCI backends
    remains (containers, runtime state, mounts, cgroups, processes)."""
    disruption = Disruption("the Docker engine restarted (not used by OCI runners)", restart_engine)
    run_and_report(oci_rig, disruption, capsys)
