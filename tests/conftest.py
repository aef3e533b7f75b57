"""Shared fixtures. Real-engine fixtures skip on a machine without Docker, but fail under CI
(CI=true), where the engine and the test images must be there."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from dockworker.settings import Limits, Settings, load_settings
from dockworker.store import Store, open_store

IN_CI = os.environ.get("CI") == "true"
BUSYBOX_IMAGE = "dockworker/stack-busybox:1.35"
PYTHON_IMAGE = "dockworker/stack-python:3.11"


def _require(condition: bool, reason: str) -> None:
    if condition:
        return
    if IN_CI:
        pytest.fail(f"required in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(
        env={},
        data_dir=tmp_path / "data",
        slots=4,
        runner_id=f"test-{tmp_path.name}",
        poll_interval_s=0.05,
        heartbeat_interval_s=0.5,
        lease_ttl_s=5.0,
        infra_retry_base_delay_s=0.05,
        shutdown_grace_s=5.0,
        limits=Limits(memory_mb=128, timeout_s=60),
    )


@pytest.fixture
def store(settings: Settings) -> Iterator[Store]:
    store = open_store(settings.database_url)
    store.migrate()
    yield store
    store.close()


@pytest.fixture(scope="session")
def engine() -> Iterator[object]:
    from dockworker.engine import DockerEngine
    from dockworker.errors import DockworkerError

    try:
        engine = DockerEngine()
        engine.ping()
    except DockworkerError as exc:
        _require(False, f"no Docker engine: {exc}")
    _require(
        engine.image_exists(BUSYBOX_IMAGE), f"{BUSYBOX_IMAGE} missing: run 'dockworker stacks build busybox'"
    )
    yield engine
    engine.close()


@pytest.fixture
def python_stack(engine: object) -> None:
    from dockworker.engine import DockerEngine

    assert isinstance(engine, DockerEngine)
    _require(
        engine.image_exists(PYTHON_IMAGE), f"{PYTHON_IMAGE} missing: run 'dockworker stacks build python'"
    )


class RunningRunner:
    def __init__(self, runner: object, stop: threading.Event, thread: threading.Thread) -> None:
        self.runner = runner
        self.stop = stop
        self.thread = thread


@pytest.fixture
def start_runner(settings: Settings, store: Store, engine: object) -> Iterator[object]:
    """Start a runner thread on the test's store; stopped (and checked for leaks) at teardown."""
    from dockworker.engine import DockerEngine
    from dockworker.runner import Runner

    assert isinstance(engine, DockerEngine)
    started: list[RunningRunner] = []

    def start(runner_settings: Settings | None = None, runner_engine: object = None) -> Runner:
        runner = Runner(runner_settings or settings, store, runner_engine or engine)  # type: ignore[arg-type]
        stop = threading.Event()
        thread = threading.Thread(target=runner.run, args=(stop,), daemon=True)
        thread.start()
        started.append(RunningRunner(runner, stop, thread))
        return runner

    yield start
    for item in started:
        item.stop.set()
        item.thread.join(30)
        assert not item.thread.is_alive(), "runner did not stop"
