"""SQLite's transactions begin with a statement sent straight to the driver (store/sqlite.py):
its failures must still be SQLAlchemy's errors, classified as any other statement's."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy import event

from dockworker.store.errors import StoreUnavailable
from dockworker.store.sqlite import _on_begin
from dockworker.store.transactions import translated_errors

pytestmark = pytest.mark.timeout(20)


def test_a_locked_database_at_the_begin_is_the_store_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN EXCLUSIVE")  # another process writing
    engine = sa.create_engine(f"sqlite:///{path}", connect_args={"timeout": 0, "isolation_level": None})
    event.listen(engine, "begin", _on_begin)
    try:
        with pytest.raises(StoreUnavailable, match="locked"), translated_errors(), engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO t VALUES (1)"))
        holder.execute("COMMIT")
        with translated_errors(), engine.begin() as conn:  # and it works once the lock is gone
            conn.execute(sa.text("INSERT INTO t VALUES (1)"))
        assert holder.execute("SELECT count(*) FROM t").fetchone() == (1,)
    finally:
        engine.dispose()
        holder.close()
