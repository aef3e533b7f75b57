"""Chaos with remote runners: the same run as ``test_chaos.py`` (one PostgreSQL database, two
API servers, three runners, more than a thousand tasks, runners killed with SIGKILL and
restarted), but the runners are a cluster's (``dockworker runner --api A --api B --cluster-id
--cluster-token``) inside a network namespace that reaches only the API servers, and the
disruption is an API server killed with SIGKILL and started again (the runners' first
address: they fail over to the second). The Docker engine is NOT restarted here (other tests
share it; ``test_chaos.py`` does that once).

The same verdict: every task ends exactly once, none is lost, container starts seen on the
engine equal recorded attempts, no container is left, the queue is empty."""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require
from tests.pgdb import Databases

from .chaos_load import Disruption
from .chaos_scenario import run_and_report
from .netns import netns_unsupported, runner_host
from .rig import Report, Rig

pytestmark = [pytest.mark.slow, pytest.mark.docker]

API_DOWN_S = (2.0, 5.0)


def restart_first_api_server(rig: Rig) -> None:
    """SIGKILL to the server every runner talks to first, some seconds down, then started
    again on the same address."""
    server = rig.servers[0]
    server.kill()
    down = random.Random(rig.report.seed).uniform(*API_DOWN_S)
    rig.note(f"kill -9 {server.name} (the runners' first --api); down for {down:.1f} s")
    time.sleep(down)
    rig.restart(server, threading.Event())
    rig.note(f"{server.name} started again (start {server.starts})")


@pytest.fixture
def rig(engine: object, pg_databases: Databases, tmp_path: Path) -> Iterator[Rig]:
    reason = netns_unsupported()
    require(reason is None, f"the remote chaos test runs its runners in a network namespace: {reason}")
    seed = int(os.environ.get("DW_CHAOS_SEED") or time.time())
    with runner_host("chaos") as host:
        made = Rig(tmp_path, pg_databases, Report(seed), remote=host)
        try:
            made.open()
            yield made
        finally:
            made.close()


@pytest.mark.timeout(1500)
def test_chaos_with_remote_runners_every_task_ends_once_and_nothing_is_left(
    rig: Rig, capsys: pytest.CaptureFixture[str]
) -> None:
    # The test's own clients use the second server only: the first one is the one killed.
    run_and_report(
        rig, Disruption("an API server killed and restarted", restart_first_api_server), capsys, [1]
    )
