"""Chaos on the OCI backend: the run of ``test_chaos.py`` (one PostgreSQL database, two API
servers, three runners, a thousand tasks, runners killed with SIGKILL and restarted), with the
runners on ``--runtime oci`` (crun). Their containers' supervisors outlive a killed runner, and
its spare (parked) supervisors are swept by the restarted one. The disruption: the Docker engine
stopped and started again (SIGTERM; the OCI runners use the images they have already unpacked
and do not need it).

The same verdict, with the OCI runtime as the witness (``oci_witness.py``): every task ends
exactly once, none is lost, the containers the runtime was asked to run equal the recorded
attempts, no container is left in the runners' OCI directories, the queue is empty; and once the
runners are stopped, nothing of their OCI backends remains (containers, runtime state, mounts,
cgroups, processes)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require
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
    """SIGTERM to dockerd, started again as scripts/setup.sh starts it."""
    started = time.monotonic()
    pid = stop_dockerd(ENGINE_STOP_S)
    rig.note(f"engine: dockerd {pid} exited {time.monotonic() - started:.1f} s after SIGTERM")
    start_dockerd()
    if not wait_engine(ENGINE_START_S):
        raise EngineRestartFailed(f"the Docker engine did not come back within {ENGINE_START_S} s")
    rig.note(f"engine: answering again {time.monotonic() - started:.1f} s after the SIGTERM")


@pytest.fixture
def rig(engine: object, pg_databases: Databases, tmp_path: Path) -> Iterator[Rig]:
    require_runtime(RUNTIME)
    reason = engine_not_restartable()
    require(reason is None, f"the OCI chaos test restarts the Docker engine: {reason}")
    seed = int(os.environ.get("DW_CHAOS_SEED") or time.time())
    made = Rig(tmp_path, pg_databases, Report(seed), runtime="oci")
    try:
        made.open()
        yield made
    finally:
        try:
            ensure_engine()
        finally:
            made.close()


@pytest.mark.timeout(1500)
def test_chaos_on_the_oci_backend_every_task_ends_once_and_nothing_is_left(
    rig: Rig, capsys: pytest.CaptureFixture[str]
) -> None:
    disruption = Disruption("the Docker engine restarted (not used by OCI runners)", restart_engine)
    run_and_report(rig, disruption, capsys)
