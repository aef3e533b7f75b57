"""``dockworker clusters ...`` and a cluster's own runner, as a user runs them: real processes
against a real ``dockworker up``, the runner started with ``--api`` and the token the CLI
printed, payloads encrypted by ``queue --encrypt`` and opened by that runner only."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from .cli_support import cli, cli_env, ok
from .support import LOOPBACK, Service, dockworker_command, free_port, upload_script

pytestmark = pytest.mark.docker

RUNNER_STOP_S = 60


@pytest.fixture
def runner_process(service: Service, tmp_path: Path) -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        process.terminate()
        try:
            process.wait(RUNNER_STOP_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


def _created(text: str) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)


def test_a_cluster_made_from_the_cli_runs_encrypted_tasks_on_its_own_runner(
    service: Service, tmp_path: Path, runner_process: list[subprocess.Popen[str]]
) -> None:
    keys = tmp_path / "edge"
    assert "Wrote" in cli(service, "clusters", "keygen", str(keys)).stderr
    assert (keys.with_suffix(".pem").stat().st_mode & 0o777) == 0o600
    made = cli(
        service, "clusters", "create", "edge", "--memory-mb", "128", "--public-key", str(keys) + ".pub"
    )
    assert made.returncode == 0, made.stderr
    assert "shown this once" in made.stderr
    cluster = _created(made.stdout)
    assert cluster["name"] == "edge" and cluster["encrypted_payloads"] == "yes"
    listed = [line.split("\t") for line in ok(service, "clusters", "list").splitlines()]
    assert listed == [[cluster["id"], "edge", "128", "yes", "active", "yes"]]
    assert cluster["token"] not in ok(service, "clusters", "show", "edge")

    upload_script(service, tmp_path / "echo", "echo", 'cat "$PAYLOAD_FILE"\n')
    clear = cli(service, "queue", "echo", "--cluster", "edge", "--payload", '{"pin": 1234}')
    assert clear.returncode == 2 and "encrypted payloads only" in clear.stderr

    env = cli_env(
        None,
        DOCKWORKER_API=f"http://{LOOPBACK}:{service.port}",
        CLUSTER_ID=cluster["id"],
        CLUSTER_TOKEN=cluster["token"],
        DECRYPTION_KEY_FILE=str(keys) + ".pem",
    )
    metrics_port = free_port()
    runner = subprocess.Popen(
        [
            *dockworker_command(),
            "runner",
            "--data-dir",
            str(tmp_path / "runner"),
            "--slots",
            "2",
            "--metrics-port",
            str(metrics_port),
        ],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    runner_process.append(runner)
    waited = cli(
        service, "queue", "echo", "--cluster", "edge", "--encrypt", "--payload", '{"pin": 1234}', "--wait"
    )
    assert waited.returncode == 0, waited.stderr
    assert waited.stdout == '{"pin": 1234}'
    # The runner's own metrics port: what the engine took to create and start the container.
    with urllib.request.urlopen(f"http://{LOOPBACK}:{metrics_port}/metrics", timeout=10) as answer:
        metrics = answer.read().decode()
    assert "dockworker_container_start_seconds_count 1.0" in metrics
    assert 'dockworker_engine_errors_total{operation="create"} 0.0' in metrics
    stats = json.loads(ok(service, "clusters", "stats", "edge", "--json"))
    assert [r["id"].split("@")[1] for r in stats["runners"]] == [cluster["id"]]

    # A second runner with the same name and data directory is refused at once.
    twin = subprocess.run(
        [*dockworker_command(), "runner", "--data-dir", str(tmp_path / "runner")],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert twin.returncode == 2 and "in use by another runner" in twin.stderr

    # Rotating the token: the running runner is refused at its next call and stops, non-zero.
    rotated = _created(ok(service, "clusters", "rotate-token", "edge"))
    assert rotated["token"] != cluster["token"]
    assert runner.wait(RUNNER_STOP_S) == 2
    output = runner.stdout.read() if runner.stdout else ""
    assert "refused this runner's cluster token" in output
    refused = cli(service, "queue", "echo", "--cluster", cluster["id"], "--encrypt", "--payload", "x")
    assert refused.returncode == 0  # queueing is the project's business: the task waits for a runner
    assert cli(service, "clusters", "delete", "edge").returncode == 2  # that task still needs it
