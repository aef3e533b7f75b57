"""The migrations produce exactly the schema the code declares."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from dockworker.store.schema import metadata
from dockworker.store.sqlite import SqliteStore


def test_upgrade_head_matches_the_declared_schema(store: SqliteStore) -> None:
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == []


def test_installation_id_is_stable(store: SqliteStore) -> None:
    first = store.installation_id()
    assert first == store.installation_id()
    assert len(first) == 24
