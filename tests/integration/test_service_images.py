"""dockworker's own images, built offline on the real engine and run."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from dockworker import __version__
from dockworker.api import create_app
from dockworker.engine import DockerEngine
from dockworker.models import CodeSpec, Task
from dockworker.settings import Settings
from dockworker.store import Store
from tests.helpers import left_after, queue, save_code

from .live_server import serving

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]
SERVER_IMAGE = f"dockworker/server:{__version__}"
RUNNER_IMAGE = f"dockworker/runner:{__version__}"


def _dockworker(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from dockworker.cli.main import main; main()", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=540,
        check=False,
    )


@pytest.fixture(scope="module")
def built_images(engine: DockerEngine) -> None:
    """Both images, built through the CLI with the checkout's shared stack cache (the Debian
    base that scripts/setup.sh made for the stacks)."""
    result = _dockworker("images", "build", "--data-dir", str(REPO / "data"))
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert [line.split("\t")[0] for line in lines] == [SERVER_IMAGE, RUNNER_IMAGE]
    assert "images: 100%" in result.stderr


def test_a_second_build_finds_both_images_up_to_date(built_images: None) -> None:
    result = _dockworker("images", "build", "--data-dir", str(REPO / "data"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines() == [f"{SERVER_IMAGE}\tup to date", f"{RUNNER_IMAGE}\tup to date"]


def test_the_images_share_one_layer_and_run_as_non_root(built_images: None) -> None:
    def inspect(ref: str) -> dict[str, object]:
        found = subprocess.run(
            ["docker", "image", "inspect", ref], capture_output=True, text=True, check=True
        )
        data: dict[str, object] = json.loads(found.stdout)[0]
        return data

    server, runner = inspect(SERVER_IMAGE), inspect(RUNNER_IMAGE)
    assert server["RootFS"] == runner["RootFS"]
    for image in (server, runner):
        config = image["Config"]
        assert isinstance(config, dict)
        assert config["User"] == "1000:1000"
        assert config["Entrypoint"] == ["/opt/dockworker/bin/dockworker"]
    assert server["Config"]["Cmd"][0] == "server"  # type: ignore[index]
    assert runner["Config"]["Cmd"] == ["runner"]  # type: ignore[index]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def server_container(built_images: None, tmp_path: Path) -> Iterator[tuple[int, Path]]:
    data = tmp_path / "server-data"
    data.mkdir()
    os.chown(data, 1000, 1000)
    port = _free_port()
    name = f"dockworker-test-server-{os.getpid()}"
    subprocess.run(
        [
            "docker", "run", "-d", "--name", name, "--network", "host",
            "-v", f"{data}:/var/lib/dockworker", SERVER_IMAGE,
            "server", "--host", "127.0.0.1", "--port", str(port),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    try:
        yield port, data
    finally:
        logs = subprocess.run(["docker", "logs", name], capture_output=True, text=True, check=False)
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, check=False)
        print(logs.stdout[-2000:], logs.stderr[-2000:])


def test_the_server_image_serves_the_api_from_its_volume(server_container: tuple[int, Path]) -> None:
    port, data = server_container
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/version", timeout=2) as answer:
                version = json.loads(answer.read())
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    assert version["version"] == __version__
    database = data / "dockworker.db"
    assert database.is_file()
    assert database.stat().st_uid == 1000


# --- the runner image runs a task end to end ----------------------------------------------------

HELLO_SH = 'echo "hello from $TASK_ID"\necho "payload: $(cat "$PAYLOAD_FILE")"\n'


def _docker(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=False)


def _wait_terminal(store: Store, task_id: str, runner: str) -> Task:
    deadline = time.monotonic() + 90
    while not (task := store.load_task(task_id)).status.is_terminal:
        state = _docker("inspect", "--format", "{{.State.Status}}", runner).stdout.strip()
        logs = _docker("logs", runner)
        assert state == "running", f"the runner container is {state}:\n{logs.stdout}{logs.stderr}"
        assert time.monotonic() < deadline, f"task {task.status}:\n{logs.stdout[-3000:]}{logs.stderr[-3000:]}"
        time.sleep(0.1)
    return task


def test_the_runner_image_runs_a_task_end_to_end(
    built_images: None, engine: DockerEngine, settings: Settings, store: Store, tmp_path: Path
) -> None:
    """``docker run`` of dockworker/runner, as non-root (uid 1000, plus the group of the engine's
    socket), against an API server of this test on 127.0.0.1 (``--network host``), its data
    directory mounted at the same path inside and out: the task containers' bind mounts are
    resolved by the host's engine."""
    project = store.create_project("images").id
    token, cluster = store.create_cluster(project, "edge", 256)
    save_code(
        store, project, CodeSpec(name="hello", stack="busybox", command="sh hello.sh"), {"hello.sh": HELLO_SH}
    )
    data = tmp_path / "runner-data"
    data.mkdir()
    os.chown(data, 1000, 1000)
    socket_gid = os.stat("/var/run/docker.sock").st_gid
    name = f"dockworker-test-runner-{os.getpid()}"
    with serving(create_app(settings, store)) as port:
        started = _docker(
            "run", "-d", "--name", name, "--network", "host",
            "--group-add", str(socket_gid),
            "-v", "/var/run/docker.sock:/var/run/docker.sock",
            "-v", f"{data}:{data}",
            "-e", f"DOCKWORKER_API=http://127.0.0.1:{port}",
            "-e", f"CLUSTER_ID={cluster.id}", "-e", f"CLUSTER_TOKEN={token}",
            "-e", f"DOCKWORKER_DATA_DIR={data}", "-e", "DOCKWORKER_SLOTS=1",
            RUNNER_IMAGE,
        )  # fmt: skip
        assert started.returncode == 0, started.stderr
        try:
            task = queue(store, project, "hello", payload="42", cluster=cluster.id)
            done = _wait_terminal(store, task.id, name)
            assert done.status.value == "complete", done.msg
            assert store.read_log(task.id).decode() == f"hello from {task.id}\npayload: 42\n"
            label = f"dockworker.task={task.id}"
            assert left_after(lambda: [c.id for c in engine.list_labelled(label)]) == []
            assert (data / "code-cache").is_dir() and (data / "runner-session.json").stat().st_uid == 1000

            who = (
                _docker("exec", name, "id", "-u").stdout.split(),
                _docker("exec", name, "id", "-G").stdout.split(),
            )
            assert who[0] == ["1000"] and str(socket_gid) in who[1], who
            stopped = _docker("stop", "--time", "30", name)
            assert stopped.returncode == 0, stopped.stderr
            exit_code = _docker("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip()
            assert exit_code == "0", _docker("logs", name).stderr[-3000:]
        finally:
            logs = _docker("logs", name)
            _docker("rm", "-f", name)
            print(logs.stdout[-2000:], logs.stderr[-2000:])
    assert _docker("ps", "-a", "-q", "--filter", f"name=^{name}$").stdout.strip() == ""
