"""SQLite: the embedded default. One writer at a time (``BEGIN IMMEDIATE``), WAL so readers
never wait, and a claim that is one ``UPDATE ... RETURNING`` statement."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event

from .identity import RunnerIdentity, hold_file_identity
from .sql import SqlStore

# Priority 2 first, then the oldest runnable task; a task runnable for longer than the
# starvation bound goes ahead of any priority (oldest first), so low priorities never starve.
# A code package's max_concurrency counts its tasks preparing or running on any runner.
CLAIM = sa.text(
    """
    UPDATE tasks
       SET status = 'preparing', runner_id = :runner_id, lease_expires_at = :lease_expires_at,
           updated_at = :now
     WHERE status = 'queued'
       AND id = (
           SELECT t.id
             FROM tasks AS t
             LEFT JOIN codes AS c ON c.id = t.code_id
            WHERE t.status = 'queued'
              AND t.run_at <= :now
              AND t.cluster IN :clusters
              AND (c.paused IS NULL OR c.paused = 0)
              AND (c.max_concurrency IS NULL OR c.max_concurrency <= 0
                   OR (SELECT count(*) FROM tasks AS r
                        WHERE r.code_id = t.code_id AND r.status IN ('preparing', 'running'))
                      < c.max_concurrency)
            ORDER BY CASE WHEN t.run_at <= :starved_before THEN 3 ELSE t.priority END DESC, t.run_at, t.id
            LIMIT 1)
    RETURNING *
    """
).bindparams(sa.bindparam("clusters", expanding=True))


def _on_connect(dbapi_connection: Any, _record: Any) -> None:
    # Take transaction control away from Python's sqlite3 module: SQLAlchemy's "begin"
    # event below decides between BEGIN (reads) and BEGIN IMMEDIATE (writes).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    for pragma in ("journal_mode=WAL", "busy_timeout=30000", "foreign_keys=ON", "synchronous=NORMAL"):
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()


def _on_begin(conn: sa.Connection) -> None:
    mode = "BEGIN" if conn.get_execution_options().get("readonly") else "BEGIN IMMEDIATE"
    conn.exec_driver_sql(mode)


class SqliteStore(SqlStore):
    claim_statement = CLAIM

    def __init__(self, url: str) -> None:
        super().__init__()
        database = sa.engine.make_url(url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        self.engine = sa.create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30},
            pool_size=8,
            max_overflow=24,
            hide_parameters=True,  # errors and logs never carry values (secrets, payloads)
        )
        event.listen(self.engine, "connect", _on_connect)
        event.listen(self.engine, "begin", _on_begin)

    def _read_options(self) -> dict[str, Any]:
        return {"readonly": True}

    def hold_runner_identity(self, runner_id: str) -> RunnerIdentity:
        return hold_file_identity(runner_id, self.engine)
