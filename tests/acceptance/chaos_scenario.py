"""One chaos run, whichever the runners and the disruption: two API servers on one PostgreSQL
database, three runners of two slots, more than a thousand tasks, runners killed with SIGKILL
and restarted, one disruption; then the verdict (``chaos_checks.py``), printed as a report
whatever the outcome."""

from __future__ import annotations

import random
import threading
import time

import pytest

from .chaos_checks import check_executions, check_tasks, check_terminal_events
from .chaos_load import (
    PACKAGES,
    Disruption,
    Load,
    cancel_running,
    chaos,
    queue_all,
    wait_no_containers,
    wait_settled,
)
from .oci_witness import oci_leftovers
from .rig import Rig, elapsed
from .support import Api

SERVERS = 2
RUNNERS = 3
SETTLE_S = 900.0
# Containers of killed runners are removed by the runners' reaper, which runs at a runner's
# start and every 30 s.
REAP_S = 75.0
THREAD_JOIN_S = 180.0
MIN_KILLS = 5


def run_and_report(
    rig: Rig, disruption: Disruption, capsys: pytest.CaptureFixture[str], clients: list[int] | None = None
) -> None:
    """The whole run; fails the test with the report's failures. ``clients``: the servers the
    test's own clients use (default: every one)."""
    report = rig.report
    rng = random.Random(report.seed)
    try:
        _run(rig, disruption, rng, clients)
    finally:
        report.lines[0:0] = ["chaos:", *(f"  {line}" for line in rig.chaos_log)]
        with capsys.disabled():
            print(report.render(), flush=True)
    assert not report.failures, "\n".join(report.failures)


def _run(rig: Rig, disruption: Disruption, rng: random.Random, client_indexes: list[int] | None) -> None:
    report = rig.report
    assert rig.events is not None
    rig.events.start(since=time.time() - 1)
    rig.start_servers(SERVERS)
    clients = [rig.apis[i] for i in (client_indexes or range(SERVERS))]
    rig.start_runners(RUNNERS)
    for kind, script in PACKAGES.items():
        rig.upload(f"chaos-{kind}", script)
    where = f"remote, cluster {rig.cluster_id}, in {rig.remote.namespace}" if rig.remote else "on the store"
    report.add(f"{elapsed(rig.t0)}  {SERVERS} servers, {RUNNERS} runners x {rig.slots} slots up ({where})")
    report.add(f"installation {rig.installation_id}, database {rig.db_name}; disruption: {disruption.name}")

    load = Load()
    quiet = threading.Event()  # every task has ended: the chaos may stop
    stop = threading.Event()  # stop now
    errors: list[str] = []
    done: list[str] = []

    def disrupt(target: Rig) -> None:
        disruption.act(target)
        done.append(disruption.name)

    threads = [
        threading.Thread(
            target=chaos,
            args=(rig, Disruption(disruption.name, disrupt), rng, quiet, stop, errors),
            name="chaos",
            daemon=True,
        ),
        threading.Thread(
            target=cancel_running,
            args=(clients, load, random.Random(rng.random()), quiet, stop, errors),
            name="cancels",
            daemon=True,
        ),
    ]
    started = time.monotonic()
    settled = False
    try:
        for thread in threads:
            thread.start()
        queue_all(rig, clients, load, rng)
        report.add(f"{elapsed(rig.t0)}  {len(load.kinds)} tasks queued")
        settled = wait_settled(rig, time.monotonic() + SETTLE_S, report)
        took = time.monotonic() - started
        report.add(f"{elapsed(rig.t0)}  all terminal: {settled} ({took:.0f} s after the first batch)")
        quiet.set()
        for thread in threads:
            thread.join(THREAD_JOIN_S)
    finally:
        stop.set()
        for thread in threads:
            thread.join(THREAD_JOIN_S)
    # The chaos may have gone on after the last task ended: every task must still be terminal.
    wait_settled(rig, time.monotonic() + SETTLE_S, report)
    for error in errors:
        report.fail(error)
    kills = sum(1 for line in rig.chaos_log if "kill -9" in line)
    if kills < MIN_KILLS or not done:
        report.fail(
            f"not enough chaos: {kills} runner kills, disruption ({disruption.name}) done: {bool(done)}"
        )
    _verdict(rig, load, clients)


def _verdict(rig: Rig, load: Load, clients: list[Api]) -> None:
    report = rig.report
    assert rig.events is not None
    left, waited = wait_no_containers(rig, REAP_S)
    where = "in the runners' OCI directories" if rig.runtime == "oci" else "of the installation"
    report.add(f"containers {where} left: {len(left)} (waited {waited:.0f} s for the reaper)")
    if left:
        report.fail(
            "containers left on the engine: "
            + "; ".join(f"{c['ID'][:12]} {c['State']} {c['Labels']}" for c in left)
        )
    watching = rig.events.current_alive()
    if watching:
        rig.events.flush()  # every start until now is in the watcher's file
    rig.events.stop()
    if not watching:
        report.fail("the engine event watcher stopped during the run: the start counts are incomplete")

    tasks = check_tasks(rig, load, report)
    check_terminal_events(rig, tasks, report)
    check_executions(rig, tasks, rig.events.starts(), report)
    for api in clients:
        pending = api.get("/tasks?queued=1&preparing=1&running=1&per_page=100")["tasks"]
        report.add(f"queue through the API on port {api.port}: {len(pending)} queued/preparing/running")
        if pending:
            report.fail(f"the queue is not empty: {[t['id'] for t in pending][:10]}")
    report.add(
        "runners: "
        + ", ".join(f"{r['id']} alive={r['alive']} running={r['running']}" for r in rig.runners_api())
    )
    codes = rig.stop_services()
    report.add("exit codes after SIGTERM: " + ", ".join(f"{name} {code}" for name, code in codes.items()))
    if rig.runtime == "oci":  # stopped: nothing of the OCI backends may remain
        remains = oci_leftovers(rig.runner_data_dirs())
        report.add(f"left by the OCI backends once stopped: {len(remains)} {remains[:10]}")
        if remains:
            report.fail(f"the OCI backends left: {remains}")
    if any(code != 0 for code in codes.values()):
        report.fail(f"a process did not exit 0 after SIGTERM (None: killed after the grace period): {codes}")
