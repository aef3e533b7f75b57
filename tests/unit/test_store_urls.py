"""Store URLs: which store each one opens."""

from __future__ import annotations

import pytest

from dockworker.errors import ClientError
from dockworker.store import open_store
from dockworker.store.postgres import PostgresStore, engine_url


@pytest.mark.parametrize(
    "url",
    [
        "postgres://user:secret@db.example:5433/dw",
        "postgresql://user:secret@db.example:5433/dw",
        "postgresql+psycopg://user:secret@db.example:5433/dw",
    ],
)
def test_postgresql_urls_all_use_psycopg_3(url: str) -> None:
    parsed = engine_url(url)
    assert parsed.drivername == "postgresql+psycopg"
    assert (parsed.username, parsed.password, parsed.host, parsed.port, parsed.database) == (
        "user",
        "secret",
        "db.example",
        5433,
        "dw",
    )


def test_open_store_dispatches_on_the_scheme() -> None:
    store = open_store("postgres://user@db.example/dw")  # connects lazily: nothing is contacted
    assert isinstance(store, PostgresStore)
    store.close()


def test_other_drivers_and_databases_are_refused() -> None:
    with pytest.raises(ClientError, match="driver"):
        engine_url("postgresql+psycopg2://user@db.example/dw")
    with pytest.raises(ClientError, match="unsupported store URL"):
        open_store("mysql://user@db.example/dw")
