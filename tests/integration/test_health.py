"""``GET /health`` on real stores and a real Docker engine, reachable or not."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from dockworker.api import create_app
from dockworker.engine import DockerEngine
from dockworker.settings import Settings
from dockworker.store import Store, open_store


def get_health(
    settings: Settings, store: Store, engine_ping: Callable[[], object] | None
) -> tuple[int, dict[str, str]]:
    app = create_app(settings, store, engine_ping=engine_ping)
    with TestClient(app) as client:
        response = client.get("/health")  # no token: load balancers and systemd have none
    return response.status_code, response.json()


def unreachable_engine_ping() -> None:
    """What the service's engine does when the daemon's socket is gone."""
    DockerEngine("unix:///nonexistent/docker.sock").ping()


def test_an_api_server_without_a_runner_checks_its_store(settings: Settings, store: Store) -> None:
    status, body = get_health(settings, store, None)
    assert status == 200
    assert body["status"] == "ok" and body["store"] == "ok" and body["engine"] == "not used"


@pytest.mark.docker
def test_the_engine_is_checked_when_the_process_runs_tasks(
    settings: Settings, store: Store, engine: DockerEngine
) -> None:
    status, body = get_health(settings, store, engine.ping)
    assert status == 200
    assert (body["status"], body["store"], body["engine"]) == ("ok", "ok", "ok")
    status, body = get_health(settings, store, unreachable_engine_ping)
    assert status == 503
    assert body["status"] == "unhealthy" and body["store"] == "ok"
    assert body["msg"].startswith("engine: ") and "nonexistent" in body["msg"]


@pytest.mark.dialects("postgresql")
def test_an_unreachable_store_is_unhealthy(settings: Settings, store: Store) -> None:
    gone = open_store("postgresql://postgres@127.0.0.1:1/nothing")  # nothing listens on port 1
    try:
        status, body = get_health(settings, gone, None)
    finally:
        gone.close()
    assert status == 503
    assert body["msg"].startswith("store: ") and "Connection refused" in body["msg"]
    assert "\n" not in body["msg"]
