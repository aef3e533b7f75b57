"""The migrations produce exactly the schema the code declares, on every dialect."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext

import dockworker.store
from dockworker.store.schema import metadata
from dockworker.store.sql import SqlStore


def _schema_diff(store: SqlStore) -> list[object]:
    with store.engine.connect() as conn:
        return list(compare_metadata(MigrationContext.configure(conn), metadata))


def _alembic(store: SqlStore, action: str, target: str) -> None:
    config = Config()
    config.set_main_option("script_location", str(Path(dockworker.store.__file__).parent / "migrations"))
    with store.engine.begin() as conn:
        config.attributes["connection"] = conn
        getattr(command, action)(config, target)


def test_upgrade_head_matches_the_declared_schema(store: SqlStore) -> None:
    assert _schema_diff(store) == []


def test_downgrade_to_nothing_then_upgrade_again(store: SqlStore) -> None:
    _alembic(store, "downgrade", "base")
    with store.engine.connect() as conn:
        assert set(store.engine.dialect.get_table_names(conn)) <= {"alembic_version"}
    store.migrate()
    assert _schema_diff(store) == []


def test_installation_id_is_stable(store: SqlStore) -> None:
    first = store.installation_id()
    assert first == store.installation_id()
    assert len(first) == 24
