"""A full disk on the runner's host, on a small tmpfs mounted for the test: the queue is held
(no budget spent) while code cannot be unpacked or task files written, the log says so a few
times rather than once per attempt, and the runner recovers by itself when space is back."""

from __future__ import annotations

import logging
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dockworker.models import CodeSpec
from dockworker.runner import runner as runner_module
from dockworker.settings import Settings
from dockworker.states import EventKind, TaskStatus
from dockworker.store import Store
from tests.conftest import StartRunner, require
from tests.helpers import queue, save_code, wait_for

pytestmark = pytest.mark.docker


class SmallDisk:
    """A 1 MB tmpfs at ``path``, filled up on request."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.filler = path / "filler"

    def mount(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(self.path)], check=True)

    def fill(self) -> None:
        with self.filler.open("wb") as handle:
            try:
                while True:
                    handle.write(b"\0" * 65536)
                    handle.flush()
            except OSError:
                pass

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)

    def unmount(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], check=False)


@pytest.fixture(params=["code-cache", "tasks"])
def full_disk(request: pytest.FixtureRequest, settings: Settings) -> Iterator[SmallDisk]:
    require(os.geteuid() == 0, "mounting a tmpfs needs root")
    path = settings.code_cache_dir if request.param == "code-cache" else settings.task_dirs
    disk = SmallDisk(path)
    disk.mount()
    disk.fill()
    yield disk
    disk.unmount()


def test_a_full_disk_holds_the_queue_until_space_is_back(
    store: Store,
    settings: Settings,
    full_disk: SmallDisk,
    start_runner: StartRunner,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    probes: list[Path] = []
    real_probe = runner_module._probe_write

    def counted_probe(directory: Path) -> None:
        probes.append(directory)
        real_probe(directory)

    monkeypatch.setattr(runner_module, "_probe_write", counted_probe)
    project = store.create_project("p").id
    save_code(
        store,
        project,
        CodeSpec(name="hello", stack="busybox", command="sh hello.sh"),
        {"hello.sh": "echo hello from the code\n"},
    )
    with caplog.at_level(logging.WARNING):
        start_runner(settings.replace(infra_retry_budget=1))
        task = queue(store, project, "hello", payload='{"some": "payload"}')
        deadline = time.monotonic() + 20
        while "released" not in [e.kind for e in store.list_events(task.id)]:
            assert time.monotonic() < deadline, [e.kind for e in store.list_events(task.id)]
            time.sleep(0.05)
        # the runner now probes the disk instead of claiming: let it fail a few probes
        while len(probes) < 4:
            assert time.monotonic() < deadline + 20, "the runner does not probe the full disk"
            time.sleep(0.05)
        held = store.load_task(task.id)
        assert held.status is TaskStatus.QUEUED, held.msg
        assert held.infra_attempts == 0 and held.attempts == 0
        assert (held.msg or "").startswith("waiting: the runner's host has no space left")
        full_disk.free()
        done = wait_for(store, task.id, timeout=30)
    assert done.status is TaskStatus.COMPLETE, done.msg
    assert store.read_log(task.id) == b"hello from the code\n"
    assert done.infra_attempts == 0
    kinds = [e.kind for e in store.list_events(task.id)]
    assert kinds.count(EventKind.RELEASED) == 1 and EventKind.INFRA_RETRY not in kinds, kinds
    full = [r for r in caplog.records if r.getMessage().startswith("runner.host_full")]
    assert 1 <= len(full) <= 3, [r.getMessage() for r in full]
    assert not list(full_disk.path.glob(".space-probe-*"))
