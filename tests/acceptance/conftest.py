"""Fixtures of the acceptance tier: a real ``dockworker up`` per module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .support import STOP_TIMEOUT_S, Service


@pytest.fixture(scope="module")
def service(engine: object, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """One ``dockworker up --slots 2`` for the whole module, on a fresh data directory.

    Module-scoped rather than session-scoped on purpose: a dockworker runner removes every
    dockworker-labelled container on the engine that its own store does not know, so two
    services must not be alive while the other runs tasks (see test_isolation.py)."""
    svc = Service(tmp_path_factory.mktemp("service") / "data")
    svc.start()
    try:
        yield svc
    finally:
        try:
            code = svc.stop(STOP_TIMEOUT_S)
        finally:
            svc.kill()
        assert code == 0, f"dockworker up exited with {code} after SIGTERM, expected 0:\n{svc.log_tail()}"
