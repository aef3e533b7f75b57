"""Runner identities held by the real stores: one live runner per id; on PostgreSQL the lock
lives on a session of its own, lost (claims stop) when that session ends and taken again."""

from __future__ import annotations

import time

import psycopg
import pytest

from dockworker.errors import AlreadyRunning
from dockworker.store import Store, open_store
from dockworker.store.identity import IDENTITY_APPLICATION_PREFIX


def test_one_holder_per_runner_id(store: Store, store_url: str) -> None:
    first = store.hold_runner_identity("runner-a")
    other_process_view = open_store(store_url)  # another connection pool, as another process has
    try:
        with pytest.raises(AlreadyRunning, match="runner 'runner-a' is already running"):
            other_process_view.hold_runner_identity("runner-a")
        other = other_process_view.hold_runner_identity("runner-b")
        other.release()
        first.release()
        again = other_process_view.hold_runner_identity("runner-a")
        assert again.held()
        again.release()
    finally:
        other_process_view.close()


@pytest.mark.dialects("postgresql")
def test_a_dropped_session_stops_the_hold_until_it_is_taken_again(store: Store, store_url: str) -> None:
    identity = store.hold_runner_identity("runner-pg")
    try:
        assert identity.held()
        url = store_url.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(url, autocommit=True) as admin:
            killed = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name LIKE %s AND datname = current_database()",
                (IDENTITY_APPLICATION_PREFIX + "%",),
            ).fetchall()
        assert killed, "no identity session found"
        deadline = time.monotonic() + 20
        while identity.held():
            assert time.monotonic() < deadline, "the hold was not noticed lost"
            time.sleep(0.05)
        while not identity.held():
            assert time.monotonic() < deadline + 20, "the hold was not taken again"
            time.sleep(0.05)
        # taken again for real: another holder is refused
        other = open_store(store_url)
        try:
            with pytest.raises(AlreadyRunning):
                other.hold_runner_identity("runner-pg")
        finally:
            other.close()
    finally:
        identity.release()
