"""What the CLI checks before it sends or queues anything, the legacy upload options, where it
finds its configuration, the upload's ignore file, and a server that is not dockworker."""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from .cli_support import assert_quiet, cli, cli_env, ok
from .support import LOOPBACK, Service, clean_env, free_port, version_answers, write_files

pytestmark = pytest.mark.docker

STATUSES = "queued, preparing, running, complete, error, cancelled, killed, timeout"


def refused(service: Service | None, *args: str, **kwargs: Any) -> str:
    """The command fails with status 2 and a one-line message; its stderr."""
    result = cli(service, *args, **kwargs)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stdout == ""
    assert_quiet(result.stderr)
    return result.stderr


@pytest.fixture(scope="module")
def hello(service: Service, tmp_path_factory: pytest.TempPathFactory) -> str:
    directory = write_files(
        tmp_path_factory.mktemp("hello"), {"hello.sh": 'echo "payload: $(cat "$PAYLOAD_FILE")"\n'}
    )
    ok(service, "upload", str(directory), "--name", "hello", "--stack", "busybox", "--command", "sh hello.sh")
    return "hello"


def task_count(service: Service) -> int:
    return len(json.loads(ok(service, "tasks", "--per-page", "100", "--json")))


def test_an_unknown_status_filter_is_refused(service: Service, hello: str) -> None:
    message = refused(service, "tasks", "--status", "bogus")
    assert message == f"error: --status 'bogus' is not a task status: use one of {STATUSES}\n"
    ok(service, "tasks", "--status", "complete", "--status", "error")


def test_refusals_queue_nothing(service: Service, hello: str) -> None:
    before = task_count(service)
    assert "--wait follows one task" in refused(service, "queue", hello, "-n", "2", "--wait")
    assert "--timeout" in refused(service, "queue", hello, "--timeout", "0")
    assert "--delay" in refused(service, "queue", hello, "--delay", "-1")
    assert task_count(service) == before


def test_a_schedule_needs_a_cadence_or_a_start(service: Service, hello: str) -> None:
    message = refused(service, "schedule", hello)
    assert "give --every or --cron (or --start TIME alone" in message
    assert json.loads(ok(service, "schedules", "--json")) == []
    once = json.loads(ok(service, "schedule", hello, "--start", "2099-01-01T00:00:00Z", "--json"))
    assert once["run_every"] is None and once["next_start"].startswith("2099-01-01")


def test_an_unreadable_command_is_refused_at_upload(service: Service, tmp_path: Path) -> None:
    directory = write_files(tmp_path / "w", {"w.sh": "echo hi\n"})
    message = refused(
        service, "upload", str(directory), "--name", "quote", "--stack", "busybox", "--command", "sh 'w.sh"
    )
    assert message == 'error: --command "sh \'w.sh" cannot be split into words: No closing quotation\n'
    # The service refuses it from any client, with the API's field name.
    iron = service.iron()
    answer = httpx2.post(
        f"http://{LOOPBACK}:{service.port}/2/projects/{iron['project_id']}/codes",
        headers={"Authorization": f"OAuth {iron['token']}"},
        files={"data": (None, json.dumps({"name": "quote", "stack": "busybox", "command": "sh 'w.sh"}))},
    )
    assert answer.status_code == 400
    assert answer.json()["msg"].startswith("'command' \"sh 'w.sh\" cannot be split into words")
    assert "quote" not in {c["name"] for c in json.loads(ok(service, "codes", "list", "--json"))}


def test_the_payload_from_standard_input(service: Service, hello: str) -> None:
    api = service.api()
    for flag in ("-", "@-"):
        task_id = ok(service, "queue", hello, "--payload", flag, stdin='{"from": "stdin"}').strip()
        assert api.task(task_id)["payload"] == '{"from": "stdin"}'
        api.wait_status(task_id, {"complete"})


def test_a_legacy_runtime_upload(service: Service, tmp_path: Path) -> None:
    directory = write_files(tmp_path / "legacy", {"hello.sh": 'echo "args: $*"\n'})
    ok(service, "upload", str(directory), "--name", "legacy", "--runtime", "sh", "--file-name", "hello.sh")
    code = json.loads(ok(service, "codes", "show", "legacy", "--json"))
    assert (code["runtime"], code["file_name"], code["command"]) == ("sh", "hello.sh", None)
    result = cli(service, "queue", "legacy", "--wait")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("args: -payload /mnt/task/payload.json -id ")
    message = refused(
        service, "upload", str(directory), "--name", "legacy", "--runtime", "sh", "--file-name", "nope.sh"
    )
    assert "--file-name 'nope.sh' is not a file in" in message
    assert "--runtime needs --file-name" in refused(
        service, "upload", str(directory), "--name", "x", "--runtime", "sh"
    )


def test_ironworker_environment_variables_and_home_config(service: Service, tmp_path: Path) -> None:
    iron = service.iron()
    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
    home.mkdir()
    elsewhere.mkdir()
    variables = clean_env(
        HOME=str(home),
        IRON_PROJECT_ID=iron["project_id"],
        IRON_TOKEN=iron["token"],
        IRON_PORT=str(service.port),
    )
    assert ok(None, "tasks", "--json", env=variables, cwd=elsewhere).startswith("[")
    (home / ".iron.json").write_text(json.dumps({"iron_worker": {**iron, "port": service.port}}))
    assert ok(None, "tasks", "--json", env=clean_env(HOME=str(home)), cwd=elsewhere).startswith("[")
    message = refused(None, "tasks", env=clean_env(HOME=str(tmp_path / "nobody")), cwd=elsewhere)
    assert "no project_id or token configured (read: nothing found)" in message


def test_a_missing_config_file_is_named(service: Service) -> None:
    assert (
        refused(service, "tasks", "--config", "/missing.json")
        == "error: --config /missing.json: no such file\n"
    )


def test_admin_commands_never_create_a_store(service: Service, tmp_path: Path) -> None:
    message = refused(service, "token", "create", cwd=tmp_path)  # only DOCKWORKER_IRON_JSON is set
    assert message.startswith("error: no dockworker store at data/dockworker.db ")
    assert f"(DOCKWORKER_IRON_JSON's directory has one: --data-dir {service.data_dir})" in message
    assert list(tmp_path.iterdir()) == [], "nothing left behind"
    assert ok(service, "token", "create", "--data-dir", str(service.data_dir), cwd=tmp_path).strip()


def test_the_upload_honours_the_ignore_file(service: Service, tmp_path: Path) -> None:
    directory = write_files(tmp_path / "app", {"main.sh": "echo hi\n", ".env": "SECRET=1\n"})
    write_files(directory / ".git", {"config": "[core]\n"})
    write_files(directory / "node_modules" / "dep", {"index.js": "x"})
    write_files(directory / "lib", {"util.sh": "echo util\n", "debug.log": "noise\n"})
    (directory / ".dockworkerignore").write_text(".env\nnode_modules/\n*.log\n")
    ok(service, "upload", str(directory), "--name", "app", "--stack", "busybox", "--command", "sh main.sh")
    ok(service, "codes", "download", "app", "-o", str(tmp_path / "app.zip"))
    with zipfile.ZipFile(io.BytesIO((tmp_path / "app.zip").read_bytes())) as archive:
        assert sorted(archive.namelist()) == [".dockworkerignore", "lib/util.sh", "main.sh"]


@pytest.fixture
def other_server(tmp_path: Path) -> Iterator[int]:
    """A web server that is not dockworker, on a loopback port."""
    port = free_port()
    with subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", LOOPBACK, "--directory", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    ) as process:
        try:
            deadline = time.monotonic() + 15
            while not answers(port):
                assert process.poll() is None and time.monotonic() < deadline, "http.server did not start"
                time.sleep(0.05)
            assert not version_answers(port)
            yield port
        finally:
            process.terminate()


def answers(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex((LOOPBACK, port)) == 0


def test_a_server_that_is_not_dockworker(service: Service, tmp_path: Path, other_server: int) -> None:
    config = tmp_path / "other.json"
    config.write_text(json.dumps({**service.iron(), "port": other_server}))
    env = cli_env(None, DOCKWORKER_IRON_JSON=str(config))
    for args in (("tasks",), ("status", "x"), ("log", "-f", "x"), ("queue", "hello")):
        message = refused(None, *args, env=env, cwd=tmp_path)
        assert (
            f"http://127.0.0.1:{other_server} did not answer as dockworker does (it sent text/html)"
            in message
        )
