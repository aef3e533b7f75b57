"""Stopping ``dockworker up`` with real signals, and starting it again on the same data.

Each test runs a service of its own; the outcome is read from the store after the process
has exited."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dockworker.models import Task
from dockworker.store import Store, open_store

from .support import (
    Service,
    free_port,
    queue_task,
    remove_task_containers,
    run_cli,
    running_service,
    task_containers,
    upload_script,
    version_answers,
)

pytestmark = pytest.mark.docker

NAP_SH = 'echo "napping"\nsleep 2\necho "done"\n'
# Sleeps until the epoch second in its payload: long enough to be interrupted, short enough to
# complete once the service is back.
UNTIL_SH = """\
echo "sleeping until $(cat "$PAYLOAD_FILE")"
until [ "$(date +%s)" -ge "$(cat "$PAYLOAD_FILE")" ]; do sleep 0.2; done
echo "woke up"
"""


def _open(data_dir: Path) -> Store:
    return open_store(f"sqlite:///{(data_dir / 'dockworker.db').resolve()}")


def _load(data_dir: Path, task_id: str) -> tuple[Task, str]:
    store = _open(data_dir)
    try:
        return store.load_task(task_id), store.read_log(task_id).decode(errors="replace")
    finally:
        store.close()


@pytest.fixture
def task_ids() -> Iterator[list[str]]:
    """Task ids whose containers are force-removed at the end, whatever happened."""
    ids: list[str] = []
    yield ids
    for task_id in ids:
        remove_task_containers(task_id)


def _wait_api_down(service: Service, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while version_answers(service.port, timeout=0.5):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.mark.timeout(60)
def test_sigterm_lets_the_running_task_finish(engine: object, tmp_path: Path, task_ids: list[str]) -> None:
    data = tmp_path / "data"
    with running_service(data) as svc:
        upload_script(svc, tmp_path / "nap", "nap", NAP_SH)
        task_id = queue_task(svc, "nap")
        task_ids.append(task_id)
        svc.api().wait_status(task_id, {"running"})

        svc.send(signal.SIGTERM)
        code = svc.wait_exit(15)
        output = svc.log_tail()
    assert code is not None, f"dockworker up did not exit within 15 s of SIGTERM:\n{output}"
    assert code == 0, f"dockworker up exited with {code} instead of waiting for its task:\n{output}"
    task, log = _load(data, task_id)
    assert task.status.value == "complete", f"task {task.status.value}: {task.msg}"
    assert log.splitlines() == ["napping", "done"]
    assert task_containers(task_id) == []


@pytest.mark.timeout(90)
def test_second_sigterm_requeues_and_a_restart_completes_the_task(
    engine: object, tmp_path: Path, task_ids: list[str]
) -> None:
    data = tmp_path / "data"
    wake_at = int(time.time()) + 12
    with running_service(data) as svc:
        upload_script(svc, tmp_path / "until", "until", UNTIL_SH)
        credentials = svc.iron()
        task_id = queue_task(svc, "until", str(wake_at))
        task_ids.append(task_id)
        svc.api().wait_status(task_id, {"running"})
        assert len(task_containers(task_id)) == 1

        svc.send(signal.SIGTERM)
        assert _wait_api_down(svc, 10), "the API still answers 10 s after SIGTERM"
        time.sleep(0.3)
        assert svc.alive(), (
            f"dockworker up exited ({svc.wait_exit(0)}) on the first SIGTERM instead of waiting for "
            f"its running task:\n{svc.log_tail()}"
        )
        second = time.monotonic()
        svc.send(signal.SIGTERM)
        code = svc.wait_exit(15)
        took = time.monotonic() - second
        assert code is not None, f"no exit within 15 s of the second SIGTERM:\n{svc.log_tail()}"
        assert code == 0, svc.log_tail()
        assert took < 6, f"the second SIGTERM took {took:.1f} s to stop the process"
        assert time.time() < wake_at, "too slow to tell a forced stop from a finished task"

        task, _ = _load(data, task_id)
        assert task.status.value == "queued", f"task {task.status.value}: {task.msg}"
        assert "shut down" in (task.msg or ""), task.msg
        assert task_containers(task_id) == [], "the interrupted task's container is still on the engine"

        # The same data directory again: same credentials, and the task runs to the end.
        svc.start()
        assert svc.iron() == credentials, "a restart must reuse iron.json"
        done = svc.api().wait_status(task_id, {"complete", "error", "cancelled", "timeout"}, timeout=30)
        assert done["status"] == "complete", done["msg"]
        log = svc.api().request("GET", f"/tasks/{task_id}/log")[1].decode()
        assert log.rstrip().endswith("woke up")
        assert svc.stop() == 0, svc.log_tail()


@pytest.mark.timeout(60)
def test_restart_after_a_crash_readopts_the_running_container(
    engine: object, tmp_path: Path, task_ids: list[str]
) -> None:
    data = tmp_path / "data"
    wake_at = int(time.time()) + 8
    with running_service(data) as svc:
        upload_script(svc, tmp_path / "until", "until", UNTIL_SH)
        credentials = svc.iron()
        task_id = queue_task(svc, "until", str(wake_at))
        task_ids.append(task_id)
        svc.api().wait_status(task_id, {"running"})
        first_container = task_containers(task_id)
        assert len(first_container) == 1

        svc.kill()  # no chance to clean up: the container and the lease are left behind
        assert task_containers(task_id) == first_container
        assert _load(data, task_id)[0].status.value == "running"

        svc.start()
        assert svc.iron() == credentials, "a restart must reuse iron.json"
        api = svc.api()
        assert api.get("")["id"] == credentials["project_id"], "the old token still works"
        # the restarted runner (same id: same host and data directory) follows the same container
        assert task_containers(task_id) == first_container
        done = api.wait_status(task_id, {"complete", "error", "cancelled", "timeout"}, timeout=30)
        assert done["status"] == "complete", done["msg"]
        assert task_containers(task_id) == [], "the container outlived its task"
        log = api.request("GET", f"/tasks/{task_id}/log")[1].decode()
        assert log == f"sleeping until {wake_at}\nwoke up\n", "the log must be whole, each line once"
        events = [e["kind"] for e in api.get(f"/tasks/{task_id}/events")["events"]]
        assert "readopted" in events and "infra_retry" not in events, events
        assert _load(data, task_id)[0].attempts == 1


@pytest.mark.timeout(60)
def test_a_container_that_ended_while_its_runner_was_down_is_still_reported(
    engine: object, tmp_path: Path, task_ids: list[str]
) -> None:
    data = tmp_path / "data"
    wake_at = int(time.time()) + 4
    with running_service(data) as svc:
        upload_script(svc, tmp_path / "until", "until", UNTIL_SH)
        task_id = queue_task(svc, "until", str(wake_at))
        task_ids.append(task_id)
        svc.api().wait_status(task_id, {"running"})
        svc.kill()
        while time.time() < wake_at + 1.5:  # the container finishes on its own meanwhile
            time.sleep(0.2)
        svc.start()
        done = svc.api().wait_status(task_id, {"complete", "error", "cancelled", "timeout"}, timeout=30)
        assert done["status"] == "complete", done["msg"]
        assert done["exit_code"] == 0
        log = svc.api().request("GET", f"/tasks/{task_id}/log")[1].decode()
        assert log == f"sleeping until {wake_at}\nwoke up\n"
        assert task_containers(task_id) == []


@pytest.mark.timeout(60)
def test_restart_on_another_port_keeps_the_credentials_and_follows_the_port(
    engine: object, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    with running_service(data) as svc:
        credentials = svc.iron()
        assert svc.stop() == 0, svc.log_tail()

        svc.port = free_port()
        svc.start()
        rewritten = svc.iron()
        assert (rewritten["project_id"], rewritten["token"]) == (
            credentials["project_id"],
            credentials["token"],
        )
        # iron.json is what the CLI and IronWorker clients read: it must lead to the service.
        assert rewritten["port"] == svc.port, f"iron.json still says port {rewritten['port']}"
        listed = run_cli(svc, "tasks", "--json")
        assert listed.returncode == 0, listed.stderr
