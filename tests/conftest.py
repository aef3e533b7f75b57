"""Shared fixtures. Real-engine and PostgreSQL fixtures skip on a machine without them, but
fail under CI (CI=true), where the engine, the test images and PostgreSQL must be there.

Every test that uses the store runs once per dialect (``[sqlite]``, ``[postgresql]``), or on the
dialects its ``@pytest.mark.dialects(...)`` names. Tests on the real Docker engine (marked
``docker``) test the engine rather than the store: they run on SQLite only unless marked."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import psycopg
import pytest

from dockworker.runner import Runner
from dockworker.settings import Limits, Settings, load_settings
from dockworker.store import Store, open_store
from tests.pgdb import PG_URL, Databases

if TYPE_CHECKING:
    from dockworker.engine import DockerEngine, Engine

IN_CI = os.environ.get("CI") == "true"
DIALECTS = ("sqlite", "postgresql")
BUSYBOX_IMAGE = "dockworker/stack-busybox:1.35"
PYTHON_IMAGE = "dockworker/stack-python:3.11"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def require(condition: bool, reason: str) -> None:
    """Skip when a real dependency is missing on a developer's machine; fail in CI, where
    scripts/setup.sh installs every one of them."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"required in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture
def settings(tmp_path: Path, store_url: str) -> Settings:
    return load_settings(
        env={},
        data_dir=tmp_path / "data",
        store_url=store_url,
        slots=4,
        runner_id=f"test-{tmp_path.name}",
        poll_interval_s=0.05,
        heartbeat_interval_s=0.5,
        lease_ttl_s=5.0,
        infra_retry_base_delay_s=0.05,
        shutdown_grace_s=5.0,
        limits=Limits(memory_mb=128, timeout_s=60),
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "dialect" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker("dialects")
    if marker is not None:
        dialects = marker.args
    elif metafunc.definition.get_closest_marker("docker") is not None:
        dialects = ("sqlite",)
    else:
        dialects = DIALECTS
    metafunc.parametrize("dialect", dialects)


@pytest.fixture(scope="session")
def pg_databases() -> Iterator[Databases]:
    try:
        databases = Databases()
    except psycopg.OperationalError as exc:
        require(False, f"no PostgreSQL at {PG_URL} (start it: bash scripts/test.sh does): {exc}")
    databases.start()
    yield databases
    databases.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's Chromium driven by Playwright, headless, for one module at a time: Playwright's
    sync API keeps its event loop running in this thread until it is stopped, so a second
    ``sync_playwright()`` would find it, and so would any later test's ``asyncio.run``."""
    require(Path(CHROMIUM).is_file(), f"{CHROMIUM} missing: apt-get install chromium (scripts/setup.sh does)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        require(False, "playwright is not installed (pip install -e '.[test]')")
    playwright = sync_playwright().start()
    try:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()
    finally:
        playwright.stop()


@pytest.fixture
def store_url(dialect: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """The test's own database (also ``settings.store_url``): SQLite in the data directory, or
    a fresh PostgreSQL database."""
    if dialect == "sqlite":
        yield f"sqlite:///{(tmp_path / 'data' / 'dockworker.db').resolve()}"
        return
    databases: Databases = request.getfixturevalue("pg_databases")
    name = databases.take()
    yield databases.url(name)
    databases.give_back(name)


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    store = open_store(store_url)
    store.migrate()
    yield store
    store.close()


@pytest.fixture(scope="session")
def engine() -> Iterator[DockerEngine]:
    from dockworker.engine import DockerEngine
    from dockworker.errors import DockworkerError

    try:
        engine = DockerEngine()
        engine.ping()
    except DockworkerError as exc:
        require(False, f"no Docker engine: {exc}")
    require(
        engine.image_exists(BUSYBOX_IMAGE), f"{BUSYBOX_IMAGE} missing: run 'dockworker stacks build busybox'"
    )
    yield engine
    engine.close()


@pytest.fixture
def python_stack(engine: object) -> None:
    from dockworker.engine import DockerEngine

    assert isinstance(engine, DockerEngine)
    require(
        engine.image_exists(PYTHON_IMAGE), f"{PYTHON_IMAGE} missing: run 'dockworker stacks build python'"
    )


class StartRunner(Protocol):
    """The ``start_runner`` fixture: start a runner thread with these settings (the test's
    ``settings`` by default) on this engine (the test's ``engine`` by default)."""

    def __call__(
        self, runner_settings: Settings | None = None, runner_engine: Engine | None = None
    ) -> Runner: ...


class RunningRunner:
    def __init__(self, runner: Runner, stop: threading.Event, thread: threading.Thread) -> None:
        self.runner = runner
        self.stop = stop
        self.thread = thread


@pytest.fixture
def start_runner(settings: Settings, store: Store, engine: Engine) -> Iterator[StartRunner]:
    """Start a runner thread on the test's store; stopped (and checked for leaks) at teardown.
    ``engine`` is the Docker engine, or the OCI backend where a module runs on both."""
    started: list[RunningRunner] = []

    def start(runner_settings: Settings | None = None, runner_engine: Engine | None = None) -> Runner:
        runner = Runner(runner_settings or settings, store, runner_engine or engine)
        stop = threading.Event()
        thread = threading.Thread(target=runner.run, args=(stop,), daemon=True)
        thread.start()
        started.append(RunningRunner(runner, stop, thread))
        return runner

    yield start
    for item in started:
        item.stop.set()
        item.runner.wake()  # an idle runner sees the stop now, not at its next poll
        item.thread.join(30)
        assert not item.thread.is_alive(), "runner did not stop"
