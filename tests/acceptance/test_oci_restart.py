"""A real ``dockworker up --runtime oci``: tasks run through the OCI runtime, and a service killed
with SIGKILL while a task runs finds it again when it starts (the container keeps running,
its supervisor records output and exit), even when the task ended while the service was down.
Nothing is left after: no container, runtime state, mount, cgroup or supervisor."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from dockworker.store import open_store

from ..integration.oci_fixtures import leftovers, require_runtime
from .support import queue_task, running_service, upload_script

pytestmark = pytest.mark.docker

UNTIL_SH = """\
echo "waiting for release"
until [ -e /mnt/code/release ]; do sleep 0.05; done
echo "woke up"
"""
UNTIL_LOG = "waiting for release\nwoke up\n"
OCI = ("--runtime", "oci")


def release(data_dir: Path) -> None:
    for code_dir in (data_dir / "code-cache").iterdir():
        if code_dir.is_dir():
            (code_dir / "release").touch()


def started_containers(oci_root: Path) -> list[Path]:
    """Not the spare (parked) supervisors' directories: a container started."""
    return [c for c in (oci_root / "containers").iterdir() if (c / "supervisor.pid").exists()]


def wait_supervisors_done(oci_root: Path, timeout: float = 30) -> None:
    """Until every started container's supervisor has recorded its exit (ended while no
    runner ran)."""
    deadline = time.monotonic() + timeout
    while any(not (c / "exit").exists() for c in started_containers(oci_root)):
        assert time.monotonic() < deadline, "the container did not end"
        time.sleep(0.05)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("ends_while_down", [False, True], ids=["followed", "ended-while-down"])
def test_a_killed_service_re_adopts_its_oci_container(
    engine: object, tmp_path: Path, ends_while_down: bool
) -> None:
    require_runtime("crun")
    data = tmp_path / "data"
    with running_service(data, args=OCI) as svc:
        upload_script(svc, tmp_path / "until", "until", UNTIL_SH)
        task_id = queue_task(svc, "until")
        svc.api().wait_status(task_id, {"running"})
        (container,) = started_containers(data / "oci")

        svc.kill()  # SIGKILL: no chance to clean up
        assert (data / "oci" / "containers" / container.name).is_dir()
        if ends_while_down:
            release(data)
            wait_supervisors_done(data / "oci")
        svc.start()
        if not ends_while_down:
            release(data)
        done = svc.api().wait_status(
            task_id, {"complete", "error", "cancelled", "timeout", "killed"}, timeout=30
        )
        assert done["status"] == "complete", done["msg"]
        assert svc.api().request("GET", f"/tasks/{task_id}/log")[1].decode() == UNTIL_LOG
        events = [e["kind"] for e in svc.api().get(f"/tasks/{task_id}/events")["events"]]
        assert "readopted" in events and "infra_retry" not in events, events
    store = open_store(f"sqlite:///{(data / 'dockworker.db').resolve()}")
    try:
        assert store.load_task(task_id).attempts == 1
    finally:
        store.close()
    assert leftovers(data / "oci") == []
