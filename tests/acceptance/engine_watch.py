"""The Docker engine as a witness: its own record of container starts (``docker events``) and
the containers of one installation (``docker ps``), read through the docker CLI so that nothing
of dockworker's is between the test and the engine."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

INSTALLATION_LABEL = "dockworker.installation"
TASK_LABEL = "dockworker.task"
RUNNER_LABEL = "dockworker.runner"
SENTINEL_IMAGE = "dockworker/stack-busybox:1.35"
SENTINEL_PREFIX = "sentinel-"
FLUSH_S = 60.0


class EngineWatchFailed(Exception):
    """The docker CLI failed."""


def docker(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def installation_containers(installation_id: str) -> list[dict[str, Any]]:
    """Every container (any state) of the installation, as ``docker ps -a`` lists them."""
    result = docker(
        "ps",
        "-a",
        "--no-trunc",
        "--filter",
        f"label={INSTALLATION_LABEL}={installation_id}",
        "--format",
        "{{json .}}",
    )
    if result.returncode != 0:
        raise EngineWatchFailed(f"docker ps failed: {result.stderr}")
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def remove_installation_containers(installation_id: str) -> None:
    """Test cleanup: force-remove what is left of the installation's containers."""
    left = [c["ID"] for c in installation_containers(installation_id)]
    if left:
        docker("rm", "-f", *left, timeout=60)


class StartEvents:
    """The engine's own record of container starts for one installation: ``docker events``,
    started again (from the restart's time) after the engine restarts."""

    def __init__(self, directory: Path, installation_id: str) -> None:
        self.directory = directory
        self.installation_id = installation_id
        self.watchers: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(self, since: float) -> None:
        path = self.directory / f"engine-events-{len(self.watchers)}.jsonl"
        with path.open("wb") as out:
            process = subprocess.Popen(
                [
                    "docker",
                    "events",
                    "--since",
                    f"{since:.6f}",
                    "--format",
                    "{{json .}}",
                    "--filter",
                    "type=container",
                    "--filter",
                    "event=start",
                    "--filter",
                    f"label={INSTALLATION_LABEL}={self.installation_id}",
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.watchers.append((process, path))

    def current_alive(self) -> bool:
        return bool(self.watchers) and self.watchers[-1][0].poll() is None

    def flush(self, timeout: float = FLUSH_S) -> None:
        """Return once every start until now is in the watcher's file: start a container of the
        installation labelled as no task's (a sentinel, left out of :meth:`starts`) and wait
        for its start to be written. A runner's reaper may remove it before it starts: then
        another one."""
        deadline = time.monotonic() + timeout
        path = self.watchers[-1][1]
        while time.monotonic() < deadline:
            marker = f"{SENTINEL_PREFIX}{uuid.uuid4().hex}"
            docker(
                "run",
                "--rm",
                "--network",
                "none",
                "--label",
                f"{INSTALLATION_LABEL}={self.installation_id}",
                "--label",
                f"{TASK_LABEL}={marker}",
                SENTINEL_IMAGE,
                "true",
                timeout=timeout,
            )
            seen_by = time.monotonic() + 10
            while time.monotonic() < min(seen_by, deadline):
                if marker in path.read_text(errors="replace"):
                    return
                time.sleep(0.05)
        raise EngineWatchFailed(f"the engine's events did not reach {path} within {timeout} s")

    def stop(self) -> None:
        for process, _ in self.watchers:
            if process.poll() is None:
                process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)

    def starts(self) -> dict[str, list[dict[str, Any]]]:
        """Container starts per task id, each start once."""
        seen: set[tuple[str, int]] = set()
        found: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for _, path in self.watchers:
            for line in path.read_text(errors="replace").splitlines():
                if not line.startswith("{"):
                    continue
                event = json.loads(line)
                key = (event["id"], int(event.get("timeNano") or 0))
                if key in seen:
                    continue
                seen.add(key)
                attributes = event.get("Actor", {}).get("Attributes", {})
                if attributes.get(TASK_LABEL, "").startswith(SENTINEL_PREFIX):
                    continue
                found[attributes.get(TASK_LABEL, "?")].append(
                    {
                        "container": event["id"][:12],
                        "time": event.get("time"),
                        "runner": attributes.get(RUNNER_LABEL),
                    }
                )
        return dict(found)
