"""Stopping ``dockworker up`` with real signals, and starting it again on the same data.

Each test runs a service of its own; the outcome is read from the store after the process
has exited."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dockworker.models import CodeSpec, Task
from dockworker.states import EventKind
from dockworker.store import Store, open_store
from tests.helpers import left_after

from .support import (
    Service,
    clean_env,
    dockworker_command,
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
# Runs until the test releases it: a file the test writes into the package's unpacked code,
# which the container sees through its read-only bind of that directory.
UNTIL_SH = """\
echo "waiting for release"
until [ -e /mnt/code/release ]; do sleep 0.1; done
echo "woke up"
"""
UNTIL_LOG = "waiting for release\nwoke up\n"


def _release(data_dir: Path) -> None:
    """Let every task of the until package end (each unpacked code package gets the file)."""
    for code_dir in (data_dir / "code-cache").iterdir():
        if code_dir.is_dir():
            (code_dir / "release").touch()


def _accounting_cgroups(task_id: str) -> list[str]:
    """The Docker adapter's parent cgroups of this task, in any hierarchy."""
    from dockworker.engine.cgroupfs import CgroupLayout
    from dockworker.engine.docker_accounting import ROOT_DIR

    return [
        str(path)
        for hierarchy in CgroupLayout.detect().hierarchies()
        for path in hierarchy.glob(f"{ROOT_DIR}/*/{task_id}.*")
    ]


def _wait_exited(engine: object, container_id: str) -> None:
    from dockworker.engine import DockerEngine

    assert isinstance(engine, DockerEngine)
    engine.wait(container_id, timeout=30)


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
    with running_service(data) as svc:
        upload_script(svc, tmp_path / "until", "until", UNTIL_SH)
        credentials = svc.iron()
        task_id = queue_task(svc, "until")
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

        task, _ = _load(data, task_id)
        assert task.status.value == "queued", f"task {task.status.value}: {task.msg}"
        assert "shut down" in (task.msg or ""), task.msg
        assert task_containers(task_id) == [], "the interrupted task's container is still on the engine"

        # The same data directory again: same credentials, and the task runs to the end.
        _release(data)
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
    with running_service(data) as svc:
        upload_script(svc, tmp_path / "until", "until", UNTIL_SH)
        credentials = svc.iron()
        task_id = queue_task(svc, "until")
        task_ids.append(task_id)
        svc.api().wait_status(task_id, {"running"})
        first_container = task_containers(task_id)
        assert len(first_container) == 1

        svc.kill()  # no chance to clean up: the container and the lease are left behind
        assert task_containers(task_id) == first_container
        assert _accounting_cgroups(task_id) != []  # and its accounting cgroup
        assert _load(data, task_id)[0].status.value == "running"

        svc.start()
        assert svc.iron() == credentials, "a restart must reuse iron.json"
        api = svc.api()
        assert api.get("")["id"] == credentials["project_id"], "the old token still works"
        # the restarted runner (same id: same host and data directory) follows the same container
        assert task_containers(task_id) == first_container
        _release(data)
        done = api.wait_status(task_id, {"complete", "error", "cancelled", "timeout"}, timeout=30)
        assert done["status"] == "complete", done["msg"]
        # removed just after the outcome is reported
        assert left_after(lambda: task_containers(task_id)) == [], "the container outlived its task"
        # what it used is measured across the crash, and its accounting cgroup is gone with it
        assert done["cpu_time_ms"] is not None and done["peak_memory_bytes"] is not None
        assert left_after(lambda: _accounting_cgroups(task_id)) == []
        log = api.request("GET", f"/tasks/{task_id}/log")[1].decode()
        assert log == UNTIL_LOG, "the log must be whole, each line once"
        events = [e["kind"] for e in api.get(f"/tasks/{task_id}/events")["events"]]
        assert "readopted" in events and "infra_retry" not in events, events
        assert _load(data, task_id)[0].attempts == 1
        # the line about the re-adoption names the task it is about
        assert "runner.readopt runner_id=" in svc.log_tail(100_000)
        assert f"task_id={task_id}" in svc.log_tail(100_000)


@pytest.mark.timeout(60)
def test_a_container_that_ended_while_its_runner_was_down_is_still_reported(
    engine: object, tmp_path: Path, task_ids: list[str]
) -> None:
    data = tmp_path / "data"
    with running_service(data) as svc:
        upload_script(svc, tmp_path / "until", "until", UNTIL_SH)
        task_id = queue_task(svc, "until")
        task_ids.append(task_id)
        svc.api().wait_status(task_id, {"running"})
        svc.kill()
        (container,) = task_containers(task_id)
        _release(data)
        _wait_exited(engine, container)  # it finished while no runner was watching
        svc.start()
        done = svc.api().wait_status(task_id, {"complete", "error", "cancelled", "timeout"}, timeout=30)
        assert done["status"] == "complete", done["msg"]
        assert done["exit_code"] == 0
        # it ended unwatched: its parent cgroup kept the figures until the restarted runner read them
        assert done["cpu_time_ms"] is not None and done["peak_memory_bytes"] is not None
        log = svc.api().request("GET", f"/tasks/{task_id}/log")[1].decode()
        assert log == UNTIL_LOG
        assert left_after(lambda: task_containers(task_id)) == []
        assert left_after(lambda: _accounting_cgroups(task_id)) == []


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


# --- one live instance per data directory and per runner identity -------------------------------


def _spawn(data_dir: Path, *args: str, output: Path, **env: str) -> subprocess.Popen[bytes]:
    with output.open("ab") as log:
        return subprocess.Popen(
            [*dockworker_command(), *args],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=clean_env(**env),
            cwd=data_dir.parent,
            start_new_session=True,
        )


def _stop(process: subprocess.Popen[bytes]) -> int | None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
            return None
    return process.returncode


def _prepared_store(store_url: str, tmp_path: Path) -> tuple[Store, str]:
    """A store with a project and the until package (its code in the store, as uploads leave
    it), ready for a runner process."""
    from tests.helpers import save_code

    store = open_store(store_url)
    store.migrate()
    project = store.create_project("p").id
    spec = CodeSpec(name="until", stack="busybox", command="sh until.sh")
    save_code(store, project, spec, {"until.sh": UNTIL_SH})
    return store, project


def _queue(store: Store, project: str) -> str:
    from tests.helpers import queue

    return queue(store, project, "until").id


def _wait_status(store: Store, task_id: str, statuses: set[str], timeout: float = 30) -> Task:
    deadline = time.monotonic() + timeout
    while (task := store.load_task(task_id)).status.value not in statuses:
        assert time.monotonic() < deadline, f"task {task_id} still {task.status.value}: {task.msg}"
        time.sleep(0.05)
    return task


@pytest.mark.timeout(90)
@pytest.mark.dialects("sqlite", "postgresql")
def test_a_second_runner_with_the_same_id_refuses_at_once_and_touches_nothing(
    engine: object, tmp_path: Path, store_url: str, task_ids: list[str]
) -> None:
    data = tmp_path / "data"
    store, project = _prepared_store(store_url, tmp_path)
    args = ("runner", "--data-dir", str(data), "--store", store_url, "--runner-id", "twin", "--slots", "2")
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    first = _spawn(data, *args, output=first_log, DOCKWORKER_LOG_FORMAT="json")
    try:
        task_id = _queue(store, project)
        task_ids.append(task_id)
        _wait_status(store, task_id, {"running"})
        (container,) = task_containers(task_id)

        second = _spawn(data, *args, output=second_log)
        code = second.wait(30)
        said = second_log.read_text()
        assert code not in (0, None), said
        assert "runner 'twin' is already running" in said and str(first.pid) in said, said
        # nothing of the first runner's was touched
        assert task_containers(task_id) == [container]
        task = store.load_task(task_id)
        assert task.status.value == "running" and task.attempts == 1
        assert [r.id for r in store.list_runners()] == ["twin"]

        _release(data)
        done = _wait_status(store, task_id, {"complete", "error", "killed", "queued"})
        assert done.status.value == "complete", done.msg
        kinds = [e.kind for e in store.list_events(task_id)]
        assert EventKind.LATE_REPORT_REFUSED not in kinds and kinds.count(EventKind.CLAIMED) == 1, kinds
        assert store.read_log(task_id).decode() == UNTIL_LOG
    finally:
        assert _stop(first) == 0, first_log.read_text()[-4000:]
        store.close()
    # the first runner wrote JSON lines, each about its runner or task by id
    lines = [json.loads(line) for line in first_log.read_text().splitlines() if line.startswith("{")]
    assert any(entry["msg"] == "runner.starting" and entry["runner_id"] == "twin" for entry in lines), lines
    assert any(entry["msg"] == "runner.stopped" for entry in lines), lines


@pytest.mark.timeout(90)
@pytest.mark.dialects("sqlite", "postgresql")
def test_a_runner_killed_and_restarted_at_once_gets_its_identity_back(
    engine: object, tmp_path: Path, store_url: str, task_ids: list[str]
) -> None:
    data = tmp_path / "data"
    store, project = _prepared_store(store_url, tmp_path)
    args = ("runner", "--data-dir", str(data), "--store", store_url, "--runner-id", "phoenix")
    output = tmp_path / "runner.log"
    process = _spawn(data, *args, output=output)
    try:
        task_id = _queue(store, project)
        task_ids.append(task_id)
        _wait_status(store, task_id, {"running"})
        process.kill()
        process.wait(10)
        process = _spawn(data, *args, output=output)  # at once
        deadline = time.monotonic() + 30
        while "readopted" not in [e.kind for e in store.list_events(task_id)]:
            assert process.poll() is None, f"the restarted runner exited:\n{output.read_text()[-4000:]}"
            assert time.monotonic() < deadline, output.read_text()[-4000:]
            time.sleep(0.05)
        _release(data)
        done = _wait_status(store, task_id, {"complete", "error", "killed"})
        assert done.status.value == "complete" and done.attempts == 1, done.msg
        assert store.read_log(task_id).decode() == UNTIL_LOG
    finally:
        assert _stop(process) == 0, output.read_text()[-4000:]
        store.close()


@pytest.mark.timeout(90)
def test_a_second_up_on_the_same_data_directory_is_refused_before_touching_anything(
    engine: object, tmp_path: Path, task_ids: list[str]
) -> None:
    data = tmp_path / "data"
    with running_service(data) as svc:
        upload_script(svc, tmp_path / "until", "until", UNTIL_SH)
        task_id = queue_task(svc, "until")
        task_ids.append(task_id)
        svc.api().wait_status(task_id, {"running"})
        containers = task_containers(task_id)
        iron_json = svc.iron_json.read_bytes()
        # the same port, then another one
        for port in (svc.port, free_port()):
            output = tmp_path / f"second-{port}.log"
            second = _spawn(data, "up", "--data-dir", str(data), "--port", str(port), output=output)
            code = second.wait(30)
            said = output.read_text()
            assert code not in (0, None), said
            assert f"the data directory {data} is in use" in said and f"pid {svc.pid}" in said, said
        assert svc.iron_json.read_bytes() == iron_json, "the refused process rewrote iron.json"
        assert task_containers(task_id) == containers
        _release(data)
        done = svc.api().wait_status(task_id, {"complete", "error", "killed", "cancelled"})
        assert done["status"] == "complete", done["msg"]
        events = [e["kind"] for e in svc.api().get(f"/tasks/{task_id}/events")["events"]]
        assert "late_report_refused" not in events and "readopted" not in events, events
        assert svc.api().request("GET", f"/tasks/{task_id}/log")[1].decode() == UNTIL_LOG
        assert svc.stop() == 0, svc.log_tail()


@pytest.mark.timeout(60)
def test_up_on_a_port_in_use_fails_before_its_runner_claims_anything(
    engine: object, tmp_path: Path, task_ids: list[str]
) -> None:
    data = tmp_path / "data"
    store, project = _prepared_store(f"sqlite:///{(data / 'dockworker.db').resolve()}", tmp_path)
    task_id = _queue(store, project)
    task_ids.append(task_id)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        output = tmp_path / "up.log"
        process = _spawn(data, "up", "--data-dir", str(data), "--port", str(port), output=output)
        code = process.wait(30)
    said = output.read_text()
    assert code not in (0, None), said
    assert f"cannot listen on 127.0.0.1:{port}" in said, said
    assert [e.kind for e in store.list_events(task_id)] == ["queued"]
    assert not (data / "iron.json").exists()
    store.close()
