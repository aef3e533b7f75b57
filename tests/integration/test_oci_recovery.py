"""Crash safety of the OCI backend: the process that started a container is killed with
SIGKILL; a new engine on the same directory finds the container, follows its output, reads its
exit (and an OOM that happened while no one was there), and removes it without a trace. A
container whose own supervisor was killed is reaped. A runner re-adopts a task whose container a
killed process had started."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from dockworker.engine import Bind, ContainerSpec, DockerEngine
from dockworker.engine.cgroupfs import CgroupLayout
from dockworker.engine.oci import OciEngine
from dockworker.engine.oci.cgroups import TaskCgroups
from dockworker.errors import InfrastructureError
from dockworker.models import CodeSpec
from dockworker.names import INSTALLATION_LABEL, RUNNER_LABEL, TASK_LABEL
from dockworker.settings import Settings
from dockworker.states import TaskStatus
from dockworker.store import Store
from tests.conftest import BUSYBOX_IMAGE
from tests.helpers import queue, save_code, wait_for

from . import oci_fixtures

runtime = oci_fixtures.runtime
oci_root = oci_fixtures.oci_root
oci_engine = oci_fixtures.oci_engine
start_oci_runner = oci_fixtures.start_oci_runner

pytestmark = pytest.mark.docker

# A process that starts one container on the OCI backend, says its id, and waits to be killed.
STARTER = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from dockworker.engine import Bind, ContainerSpec, DockerEngine
    from dockworker.engine.oci import OciEngine
    root, runtime, spec = Path(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
    spec["binds"] = tuple(Bind(**b) for b in spec["binds"])
    engine = OciEngine(root, DockerEngine(), runtime=runtime)
    container_id = engine.create(ContainerSpec(**spec))
    engine.start(container_id)
    print(container_id, flush=True)
    time.sleep(600)
    """
)


@pytest.fixture
def gate(tmp_path: Path) -> Path:
    """A directory the container watches: the test opens the gate by creating ``go``."""
    directory = tmp_path / "gate"
    directory.mkdir()
    return directory


def start_in_a_process_then_kill_it(root: Path, runtime: str, spec: dict[str, object]) -> str:
    starter = subprocess.Popen(
        [sys.executable, "-c", STARTER, str(root), runtime, json.dumps(spec)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert starter.stdout is not None
        container_id = starter.stdout.readline().strip()
        assert len(container_id) == 64, container_id
    finally:
        starter.send_signal(signal.SIGKILL)
        starter.wait(10)
        if starter.stdout is not None:
            starter.stdout.close()
    assert starter.returncode == -signal.SIGKILL
    return container_id


def gated_spec(gate: Path, script: str, **changes: object) -> dict[str, object]:
    return {
        "image": BUSYBOX_IMAGE,
        "command": ["sh", "-c", f"echo early; while [ ! -e /gate/go ]; do sleep 0.02; done; {script}"],
        "labels": {TASK_LABEL: "t-crash"},
        "binds": [{"source": str(gate), "target": "/gate", "read_only": True}],
        "memory_bytes": 64 * 1024 * 1024,
        **changes,
    }


def test_a_container_outlives_the_process_that_started_it_and_is_followed(
    oci_root: Path, runtime: str, engine: DockerEngine, gate: Path
) -> None:
    container_id = start_in_a_process_then_kill_it(oci_root, runtime, gated_spec(gate, "echo late; exit 7"))
    oci = OciEngine(oci_root, engine, runtime=runtime)  # the restarted runner's engine
    (found,) = oci.list_labelled(f"{TASK_LABEL}=t-crash")
    assert found.id == container_id and oci.running(container_id)
    assert oci.started_at(container_id) is not None
    output = oci.follow_logs(container_id)
    assert next(output) == b"early\n"
    (gate / "go").touch()
    assert b"".join(output) == b"late\n"
    exit_info = oci.wait(container_id)
    assert (exit_info.exit_code, exit_info.oom_killed) == (7, False)
    oci.remove(container_id)
    oci.close()
    assert oci_fixtures.leftovers(oci_root) == []


def test_an_oom_while_no_one_watched_is_recorded(
    oci_root: Path, runtime: str, engine: DockerEngine, gate: Path
) -> None:
    bomb = "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived"
    container_id = start_in_a_process_then_kill_it(oci_root, runtime, gated_spec(gate, bomb))
    (gate / "go").touch()
    oci = OciEngine(oci_root, engine, runtime=runtime)
    assert b"".join(oci.follow_logs(container_id)) == b"early\n"
    exit_info = oci.wait(container_id)
    assert (exit_info.exit_code, exit_info.oom_killed) == (137, True)
    oci.remove(container_id)
    oci.close()
    assert oci_fixtures.leftovers(oci_root) == []


def test_a_container_whose_supervisor_was_killed_is_reaped(
    oci_engine: OciEngine, oci_root: Path, gate: Path
) -> None:
    spec = ContainerSpec(
        image=BUSYBOX_IMAGE,
        command=["sh", "-c", "while [ ! -e /gate/go ]; do sleep 0.02; done"],
        labels={TASK_LABEL: "t-reaped"},
        binds=(Bind(source=str(gate), target="/gate"),),
    )
    container_id = oci_engine.create(spec)
    oci_engine.start(container_id)
    supervisor = int((oci_root / "containers" / container_id / "supervisor.pid").read_text())
    os.killpg(supervisor, signal.SIGKILL)  # the supervisor and the runtime with it, not the container
    assert [c.id for c in oci_engine.list_labelled()] == [container_id]
    deadline = time.monotonic() + 10
    while oci_engine.running(container_id) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not oci_engine.running(container_id)
    with pytest.raises(InfrastructureError, match="without recording an exit status"):
        oci_engine.wait(container_id)
    oci_engine.remove(container_id)  # kills what runs, deletes the runtime's state and cgroups
    oci_engine.close()
    assert oci_fixtures.leftovers(oci_root) == []


@pytest.mark.dialects("sqlite", "postgresql")
def test_a_runner_re_adopts_a_task_whose_container_a_killed_process_started(
    store: Store,
    settings: Settings,
    oci_root: Path,
    runtime: str,
    oci_engine: OciEngine,
    start_oci_runner: oci_fixtures.StartOciRunner,
    gate: Path,
) -> None:
    project = store.create_project("crash").id
    save_code(store, project, CodeSpec(name="hello", stack="busybox", command="echo hello"))
    task = queue(store, project, "hello")
    runner_id = settings.runner_id or ""
    assert store.claim(runner_id, ["default"], 300) is not None
    labels = {TASK_LABEL: task.id, RUNNER_LABEL: runner_id, INSTALLATION_LABEL: store.installation_id()}
    # the earlier runner process created and started the container, then was killed
    start_in_a_process_then_kill_it(oci_root, runtime, gated_spec(gate, "echo late", labels=labels))
    oci_engine.sweep()  # as the restarted process's engine does when made: the killed one's spares
    start_oci_runner()
    deadline = time.monotonic() + 20
    while "readopted" not in [e.kind for e in store.list_events(task.id)] and time.monotonic() < deadline:
        time.sleep(0.02)
    (gate / "go").touch()
    done = wait_for(store, task.id, timeout=30)
    assert done.status is TaskStatus.COMPLETE, done.msg
    assert done.attempts == 1 and done.infra_attempts == 0
    assert store.read_log(task.id) == b"early\nlate\n"
    assert "readopted" in [e.kind for e in store.list_events(task.id)]


def test_a_park_cut_short_by_a_killed_process_is_swept(
    oci_root: Path, runtime: str, engine: DockerEngine
) -> None:
    """A runner killed while it parked a supervisor (the directory made, maybe its cgroup,
    no container): the next process's engine removes it; its own spares it leaves alone."""
    OciEngine(oci_root, engine, runtime=runtime).close()  # the root's layout, as a runner makes it
    cut_short = oci_root / "containers" / ("a" * 64)
    cut_short.mkdir()
    (cut_short / "parked").write_text("1 1\n")  # another process (pid 1 started at tick 1)
    (cut_short / "lock").touch()
    cgroups = TaskCgroups(CgroupLayout.detect(), OciEngine.scope_of(oci_root), "a" * 64)
    cgroups.prepare()
    oci = OciEngine(oci_root, engine, runtime=runtime)
    try:
        assert not cut_short.exists()
        container_id = oci.create(
            ContainerSpec(image=BUSYBOX_IMAGE, command=["true"], labels={TASK_LABEL: "t-swept"})
        )
        oci.sweep()  # this process's spares and its created container stay
        assert (oci_root / "containers" / container_id / "meta.json").exists()
        spares = [p for p in (oci_root / "containers").iterdir() if p.name != container_id]
        assert spares and all((p / "parked").exists() for p in spares)
        oci.remove(container_id)
    finally:
        oci.close()
    assert oci_fixtures.leftovers(oci_root) == []
