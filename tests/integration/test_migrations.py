"""The migrations produce exactly the schema the code declares, on every dialect."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext

import dockworker.store
from dockworker.states import EventKind
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


def test_0007_gives_earlier_start_events_their_container(store: SqlStore) -> None:
    _alembic(store, "downgrade", "0006")
    container = "abcdef123456" + "7" * 52
    with store.engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO projects (id, name, created_at) VALUES ('p', 'p', 0)"))
        conn.execute(
            sa.text(
                "INSERT INTO tasks (id, project_id, code_id, code_name, code_rev, revision_id, status,"
                " priority, timeout, delay, cluster, payload, created_at, updated_at, run_at)"
                " VALUES ('t', 'p', 'c', 'c', 1, 'r', 'running', 0, 60, 0, 'default', '', 0, 0, 0)"
            )
        )
        conn.execute(
            sa.text(
                "INSERT INTO task_events (task_id, at, kind, detail) VALUES"
                " ('t', 0, 'started', 'container abcdef123456 started by runner r'),"
                " ('t', 1, 'container_created', 'abcdef123456')"
            )
        )
    store.migrate()
    assert [(e.kind, e.container_id) for e in store.list_events("t")] == [
        (EventKind.STARTED, "abcdef123456"),
        (EventKind.CONTAINER_CREATED, None),
    ]
    assert not store.record_unreported_start("t", container, "r")  # that start was counted
