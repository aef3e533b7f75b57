"""Following tasks to their end (closing line, exit status, Ctrl-C, a service stopped by
SIGTERM), the commands for code packages, events, stats and runners, ``/health``, and
``stacks build`` off a terminal."""

from __future__ import annotations

import http.client
import io
import json
import re
import signal
import subprocess
import zipfile
from pathlib import Path

import pytest

from .cli_support import assert_quiet, cli, cli_env, ok
from .support import (
    LOOPBACK,
    Service,
    dockworker_command,
    popen_cli,
    running_service,
    upload_script,
    write_files,
)

pytestmark = pytest.mark.docker

TICK_SH = 'echo "started"\nwhile true; do sleep 1; done\n'


@pytest.fixture(scope="module")
def packages(service: Service, tmp_path_factory: pytest.TempPathFactory) -> None:
    root = tmp_path_factory.mktemp("workers")
    for name, script in (("fail", 'echo "about to fail"\nexit 3\n'), ("forever", TICK_SH)):
        upload_script(service, root / name, name, script)


def finished(service: Service, name: str) -> str:
    task_id = ok(service, "queue", name).strip()
    service.api().wait_status(task_id, {"complete", "error", "cancelled", "killed", "timeout"})
    return task_id


def test_log_follow_of_a_finished_task_closes_as_queue_wait_does(service: Service, packages: None) -> None:
    task_id = finished(service, "fail")
    followed = cli(service, "log", "-f", task_id)
    waited = cli(service, "queue", "fail", "--wait")
    assert (followed.returncode, waited.returncode) == (1, 1)
    assert followed.stdout == waited.stdout == "about to fail\n"
    assert followed.stderr == f"Task {task_id} error: exit code 3: about to fail\n"
    assert waited.stderr.splitlines()[-1].endswith(" error: exit code 3: about to fail")


def test_log_follow_of_a_task_cancelled_meanwhile(service: Service, packages: None) -> None:
    task_id = ok(service, "queue", "forever").strip()
    service.api().wait_status(task_id, {"running"})
    with popen_cli(service, "log", "-f", task_id) as process:
        assert process.stdout is not None and process.stderr is not None
        assert process.stdout.readline() == "started\n"
        ok(service, "cancel", task_id)
        assert process.wait(30) == 1
        stderr = process.stderr.read()
    assert stderr == f"Task {task_id} cancelled: cancelled by user\n"


def test_ctrl_c_on_queue_wait_says_the_task_goes_on(service: Service, packages: None) -> None:
    with popen_cli(service, "queue", "forever", "--wait") as process:
        assert process.stdout is not None and process.stderr is not None
        assert process.stdout.readline() == "started\n"
        process.send_signal(signal.SIGINT)
        assert process.wait(30) == 130
        stderr = process.stderr.read()
    task_id = re.search(r"Queued task (\w+)", stderr).group(1)  # type: ignore[union-attr]
    assert f"Stopped following task {task_id}; it goes on." in stderr
    assert f"'dockworker cancel {task_id}'" in stderr
    assert_quiet(stderr)
    assert service.api().task(task_id)["status"] == "running"
    ok(service, "cancel", task_id)


def test_code_package_commands(service: Service, packages: None, tmp_path: Path) -> None:
    finished(service, "fail")
    listed = json.loads(ok(service, "codes", "list", "--json"))
    assert {"fail", "forever"} <= {c["name"] for c in listed}
    assert "sh fail.sh" in ok(service, "codes", "show", "fail")
    ok(
        service,
        "upload",
        str(write_files(tmp_path / "v2", {"fail.sh": "exit 4\n"})),
        "--name",
        "fail",
        "--stack",
        "busybox",
        "--command",
        "sh fail.sh",
    )
    revisions = [line.split("\t") for line in ok(service, "codes", "revisions", "fail").splitlines()]
    assert [r[1] for r in revisions] == ["2", "1"]
    ok(service, "codes", "download", "fail", "--revision", "1", "-o", str(tmp_path / "one.zip"))
    assert (tmp_path / "one.zip").read_bytes().startswith(b"PK")
    to_stdout = subprocess.run(
        [*dockworker_command(), "codes", "download", "fail", "-o", "-"],
        env=cli_env(service),
        capture_output=True,
        timeout=60,
        check=True,
    )
    with zipfile.ZipFile(io.BytesIO(to_stdout.stdout)) as archive:
        assert archive.read("fail.sh") == b"exit 4\n"
    stats = dict(line.split(": ") for line in ok(service, "stats", "fail").splitlines())
    assert int(stats["error"]) >= 1 and set(stats) >= {"queued", "running", "complete", "error"}
    assert ok(service, "codes", "delete", "fail").startswith("Deleted fail (id ")
    assert "fail" not in {c["name"] for c in json.loads(ok(service, "codes", "list", "--json"))}
    gone = cli(service, "codes", "show", "fail")
    assert gone.returncode == 2 and "code package 'fail' not found" in gone.stderr


def test_events_and_runners(service: Service, packages: None) -> None:
    task_id = ok(service, "queue", "forever").strip()
    service.api().wait_status(task_id, {"running"})
    ok(service, "cancel", task_id)
    kinds = [line.split("\t")[1] for line in ok(service, "events", task_id).splitlines()]
    assert kinds[0] == "queued" and len(kinds) >= 3
    runners = [
        line.split("\t") for line in ok(service, "runners", "--data-dir", str(service.data_dir)).splitlines()
    ]
    assert len(runners) == 1 and runners[0][1] == "yes"
    admin_token = re.search(r"^    (\S+)$", service.log_tail(100_000), re.MULTILINE).group(1)  # type: ignore[union-attr]
    url = f"http://{LOOPBACK}:{service.port}"
    through_api = json.loads(ok(service, "runners", "--url", url, "--admin-token", admin_token, "--json"))
    assert [r["id"] for r in through_api] == [runners[0][0]]
    refused = cli(service, "runners", "--url", url, "--admin-token", service.iron()["token"])
    assert refused.returncode == 2 and "This endpoint needs an admin token (HTTP 403)" in refused.stderr


def test_health(service: Service) -> None:
    connection = http.client.HTTPConnection(LOOPBACK, service.port, timeout=15)
    try:
        connection.request("GET", "/health")  # no token
        response = connection.getresponse()
        body = json.loads(response.read())
    finally:
        connection.close()
    assert response.status == 200, body
    assert body["status"] == "ok" and body["store"] == "ok"


def test_stacks_build_off_a_terminal_says_one_line_per_stack_when_up_to_date(service: Service) -> None:
    result = cli(service, "stacks", "build", "busybox", "python", "--data-dir", str(service.data_dir))
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "busybox: dockworker/stack-busybox:1.35 is up to date",
        "python: dockworker/stack-python:3.11 is up to date",
    ]


def test_stacks_build_off_a_terminal_writes_the_tools_output_to_its_log(tmp_path: Path) -> None:
    """A forced build of busybox (the host's static binary: seconds), as the integration tier does."""
    result = cli(None, "stacks", "build", "busybox", "--force", "--data-dir", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert lines[0] == "busybox: building dockworker/stack-busybox:1.35"
    assert lines[-1].startswith("busybox: built dockworker/stack-busybox:1.35 in ")
    assert all(line.startswith("busybox: ") for line in lines) and len(lines) < 10
    log = (tmp_path / "stack-cache" / "logs" / "busybox.log").read_text()
    assert "==> building dockworker/stack-busybox:1.35" in log
    assert "--list-full" in log


def test_sigterm_on_up_ends_log_follow_with_a_closing_line(tmp_path: Path) -> None:
    with running_service(tmp_path / "data") as service:
        directory = write_files(tmp_path / "forever", {"forever.sh": TICK_SH})
        ok(
            service,
            "upload",
            str(directory),
            "--name",
            "forever",
            "--stack",
            "busybox",
            "--command",
            "sh forever.sh",
        )
        task_id = ok(service, "queue", "forever").strip()
        service.api().wait_status(task_id, {"running"})
        with popen_cli(service, "log", "-f", task_id) as process:
            assert process.stdout is not None and process.stderr is not None
            assert process.stdout.readline() == "started\n"
            service.send(signal.SIGTERM)
            code = process.wait(60)
            rest, stderr = process.stdout.read(), process.stderr.read()
        service.wait_exit(60)
    assert code == 3, stderr
    assert stderr.startswith(f"Task {task_id}"), stderr
    assert "Follow it again with 'dockworker log -f" in stderr
    assert_quiet(stderr)
    # Once service.py sets the API's `stopping` at the first signal, the stream ends with this
    # line rather than being cut at the end of uvicorn's grace period.
    last_line = f"[dockworker] the server is stopping: this log stream ends here, with task {task_id} still "
    assert rest == "" or rest.startswith(last_line)


def test_up_shows_what_its_runner_measured_of_the_engine_on_metrics(service: Service, tmp_path: Path) -> None:
    upload_script(service, tmp_path / "quick", "quick", "echo quick\n")
    finished(service, "quick")
    admin = re.search(r"ADMIN TOKEN.*?\n\n    (\S+)\n", service.log_tail(1_000_000), re.S)
    assert admin is not None, "dockworker up printed no admin token on its first start"
    conn = http.client.HTTPConnection(LOOPBACK, service.port, timeout=15)
    try:
        conn.request("GET", "/metrics", headers={"Authorization": f"Bearer {admin[1]}"})
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    started = re.search(r"^dockworker_container_start_seconds_count (\S+)$", text, re.M)
    assert started is not None and float(started[1]) >= 1, text[:2000]
