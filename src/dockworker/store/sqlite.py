"""SQLite: the embedded default. One writer at a time (``BEGIN IMMEDIATE``), WAL so readers
never wait, and a claim that is one ``UPDATE ... RETURNING`` statement."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event

from ..states import TaskStatus, sources_of
from .claim_sql import ACTIVE, CLAIMABLE, LANE_INDEX, packages_cte
from .identity import RunnerIdentity, hold_file_identity
from .schema import PRIORITIES, status_sql
from .sql import SqlStore

_PRIORITIES = json.dumps(PRIORITIES)
# The lane index, named: SQLite's planner would rather read a package's whole history through
# ix_tasks_code_status when it covers the query.
_LANE = f"tasks AS t INDEXED BY {LANE_INDEX}"

# The claim's order: a task runnable for longer than the starvation bound goes first, oldest
# first; then priority 2 first, then the oldest runnable task. A package's
# max_concurrency counts its tasks preparing or running on any runner (one writer at a time:
# the count is exact).
#
# Its cost does not depend on the length of any queue (see ix_tasks_queue_lane):
# - packages: the packages with queued tasks, found by skipping through the index (one probe
#   each; claim_sql.PACKAGES_CTE);
# - lanes: those not paused and with room, times the runner's clusters, times the priorities;
# - heads: the first runnable task of each lane (one probe each; delayed tasks are past it);
# and the claim takes the best of the heads. The head of a lane is its best task in the claim's
# order, so the best head is the best task.
CLAIM = sa.text(
    f"""
    WITH RECURSIVE{packages_cte(_LANE)},
    open_packages(code_id) AS (
        SELECT p.code_id
          FROM packages AS p
          LEFT JOIN codes AS c ON c.id = p.code_id
         WHERE p.code_id IS NOT NULL
           AND (c.paused IS NULL OR c.paused = 0)
           AND (c.max_concurrency IS NULL OR c.max_concurrency <= 0
                OR (SELECT count(*) FROM tasks AS t WHERE t.code_id = p.code_id AND {ACTIVE})
                   < c.max_concurrency)
    ),
    heads(id) AS (
        SELECT (SELECT t.id FROM {_LANE}
                 WHERE {CLAIMABLE} AND t.code_id = o.code_id AND t.cluster = k.value
                   AND t.priority = p.value AND t.run_at <= :now
                 ORDER BY t.run_at, t.id LIMIT 1)
          FROM open_packages AS o, json_each(:clusters) AS k, json_each('{_PRIORITIES}') AS p
    )
    UPDATE tasks
       SET status = '{TaskStatus.PREPARING.value}', runner_id = :runner_id,
           lease_expires_at = :lease_expires_at, updated_at = :now
     WHERE {status_sql(sources_of(TaskStatus.PREPARING))}
       AND id = (
           SELECT t.id
             FROM heads AS h JOIN tasks AS t ON t.id = h.id
            ORDER BY CASE WHEN t.run_at <= :starved_before THEN 3 ELSE t.priority END DESC, t.run_at, t.id
            LIMIT 1)
    RETURNING *
    """
)


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
    # Straight to the driver (SQLAlchemy's execution of a statement costs several times the
    # statement here, and every transaction has one); its errors wrapped as SQLAlchemy's own
    # would be, so that a locked or full database is classified as any other statement's.
    try:
        conn.connection.driver_connection.execute(mode)  # type: ignore[union-attr]
    except sqlite3.Error as exc:
        raise sa.exc.DBAPIError.instance(mode, None, exc, sqlite3.Error) from exc


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
