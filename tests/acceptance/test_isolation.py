"""Two dockworker installations (two data directories) on one Docker engine must not touch
each other's containers: CI machines, developers' laptops and this very test suite run several
at once."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .support import queue_task, remove_task_containers, running_service, task_containers, upload_script

pytestmark = pytest.mark.docker

WATCH_S = 3.0


@pytest.fixture
def task_ids() -> Iterator[list[str]]:
    ids: list[str] = []
    yield ids
    for task_id in ids:
        remove_task_containers(task_id)


@pytest.mark.timeout(60)
def test_starting_a_second_installation_leaves_the_first_ones_task_running(
    engine: object, tmp_path: Path, task_ids: list[str]
) -> None:
    with running_service(tmp_path / "first") as first:
        upload_script(first, tmp_path / "sleeper", "sleeper", "echo sleeping\nsleep 300\n")
        task_id = queue_task(first, "sleeper")
        task_ids.append(task_id)
        api = first.api()
        api.wait_status(task_id, {"running"})
        container = task_containers(task_id)
        assert len(container) == 1

        # The second runner cleans up at start: what it removes must be its own leftovers only.
        with running_service(tmp_path / "second"):
            deadline = time.monotonic() + WATCH_S
            while time.monotonic() < deadline:
                task = api.task(task_id)
                assert task["status"] == "running", (
                    f"a second installation starting ended the task: {task['status']} ({task['msg']})"
                )
                assert task_containers(task_id) == container, "the second installation removed the container"
                time.sleep(0.2)

        assert api.task(task_id)["status"] == "running"
        api.post(f"/tasks/{task_id}/cancel")
        assert api.wait_status(task_id, {"cancelled"}, timeout=10)["status"] == "cancelled"
