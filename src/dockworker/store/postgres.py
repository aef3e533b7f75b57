"""PostgreSQL: many hosts on one database. The claim is one statement that locks the chosen
task with ``FOR UPDATE SKIP LOCKED``; wake-ups come from LISTEN/NOTIFY on a dedicated
connection. The functions and triggers it relies on are created by migration 0004."""

from __future__ import annotations

import logging
import selectors
import socket
import threading
from collections.abc import Callable, Collection, Sequence
from typing import Any

import psycopg
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert

from .. import ids, timeutil
from ..errors import ClientError
from ..models import Task
from ..states import EventKind, TaskStatus, sources_of
from .claim_sql import ACTIVE, CLAIMABLE, packages_cte
from .codes_sql import cancelled_events, cancelled_values, queued_of
from .identity import RunnerIdentity, hold_advisory_identity
from .schema import PRIORITIES, meta, status_sql, tasks
from .sql import SqlStore
from .transactions import ANY_TASK
from .transitions import enterable
from .wakeup import EndListener, TaskEnds, WorkSignal

log = logging.getLogger("dockworker.store")

NOTIFY_CHANNEL = "dockworker_tasks"
# Payload: the ids of tasks that reached a terminal state, comma-separated, or "*" (any task).
ENDS_CHANNEL = "dockworker_task_ends"
# A NOTIFY payload holds less than 8000 bytes: more ids than this are sent as "*".
MAX_ENDS_NAMED = 250
LISTENER_APPLICATION_NAME = "dockworker-listener"
# Any fixed number: the migration lock's key among this database's advisory locks.
MIGRATION_LOCK_KEY = 1685547891

_PRIORITIES = ", ".join(f"({priority})" for priority in PRIORITIES)
_LANE_HEAD = f"""
    SELECT t.id, t.run_at
      FROM tasks AS t
     WHERE {CLAIMABLE} AND t.code_id = {{lane}}.code_id AND t.cluster = {{lane}}.cluster
       AND t.priority = {{lane}}.priority AND t.run_at <= :now
     ORDER BY t.run_at, t.id
     LIMIT 1
"""

# The same choice as SQLite's claim, in the same steps (packages with queued tasks, one probe
# each; their open lanes; the head of each lane, one probe each), so that its cost does not
# depend on the length of any queue and every step reads ix_tasks_queue_lane in its order (the
# claim's transaction forbids other sorts: see _plan_claim). Then, with several claimers at once:
# - the heads are tried in the claim's order, each by locking the first task of its lane that no
#   other claim holds (FOR UPDATE SKIP LOCKED): concurrent claims take the next tasks instead of
#   waiting for each other;
# - a package with a max_concurrency goes through dockworker_package_has_room (migration 0004),
#   which serialises the claims of one package and counts its active tasks after the lock; a
#   claim that finds a package's lock taken skips the package.
# The claimed task and its "claimed" event are written by the same statement.
CLAIM = sa.text(
    f"""
    WITH RECURSIVE{packages_cte("tasks AS t")},
    lanes AS (
        SELECT p.code_id, k.cluster, r.priority, c.max_concurrency
          FROM packages AS p
          LEFT JOIN codes AS c ON c.id = p.code_id
         CROSS JOIN unnest(CAST(:clusters AS varchar[])) AS k(cluster)
         CROSS JOIN (VALUES {_PRIORITIES}) AS r(priority)
         WHERE p.code_id IS NOT NULL
           AND c.paused IS NOT TRUE
           AND (coalesce(c.max_concurrency, 0) <= 0
                OR (SELECT count(*) FROM tasks AS t WHERE t.code_id = p.code_id AND {ACTIVE})
                   < c.max_concurrency)
    ),
    heads AS MATERIALIZED (
        SELECT l.code_id, l.cluster, l.priority, l.max_concurrency, h.run_at, h.id
          FROM lanes AS l
         CROSS JOIN LATERAL ({_LANE_HEAD.format(lane="l")}) AS h
         ORDER BY CASE WHEN h.run_at <= :starved_before THEN 3 ELSE l.priority END DESC, h.run_at, h.id
    ),
    chosen AS (
        SELECT pick.id
          FROM heads AS l
         CROSS JOIN LATERAL ({_LANE_HEAD.format(lane="l")} FOR UPDATE OF t SKIP LOCKED) AS pick
         WHERE coalesce(l.max_concurrency, 0) <= 0
            OR dockworker_package_has_room(l.code_id, l.max_concurrency)
         LIMIT 1
    ),
    claimed AS (
        UPDATE tasks
           SET status = '{TaskStatus.PREPARING.value}', runner_id = :runner_id,
               lease_expires_at = :lease_expires_at, updated_at = :now
          FROM chosen
         WHERE tasks.id = chosen.id AND {status_sql(sources_of(TaskStatus.PREPARING), "tasks.status")}
        RETURNING tasks.*
    ),
    logged AS (
        INSERT INTO task_events (task_id, at, kind, detail)
        SELECT id, :now, '{EventKind.CLAIMED.value}', 'runner ' || :runner_id FROM claimed
    )
    SELECT * FROM claimed
    """
)

_RECONNECT_FIRST_S = 0.1
_RECONNECT_MAX_S = 5.0
_LIVENESS_S = 5.0


def engine_url(url: str) -> sa.URL:
    """``postgres://``, ``postgresql://`` and ``postgresql+psycopg://`` URLs, all with psycopg 3."""
    parsed = sa.engine.make_url(url)
    if parsed.drivername not in ("postgres", "postgresql", "postgresql+psycopg"):
        raise ClientError(f"unsupported PostgreSQL driver {parsed.drivername!r}: use postgresql://")
    return parsed.set(drivername="postgresql+psycopg")


class PostgresStore(SqlStore):
    """At most ``pool_size + max_overflow`` connections per process (as many as SQLite's pool
    allows, for a runner's slots), ``pool_size`` of them kept open when idle; plus the
    listener's connection once something waits for work."""

    claim_statement = CLAIM

    def __init__(self, url: str, *, pool_size: int = 5, max_overflow: int = 27) -> None:
        super().__init__()
        self.engine = sa.create_engine(
            engine_url(url),
            pool_size=pool_size,
            max_overflow=max_overflow,
            pool_pre_ping=True,
            hide_parameters=True,  # errors and logs never carry values (secrets, payloads)
        )
        self._listener = NotifyListener(self._connect_listener, self._work_signal, self._task_ends)

    def _connect_listener(self) -> psycopg.Connection[Any]:
        args, kwargs = self.engine.dialect.create_connect_args(self.engine.url)
        kwargs.setdefault("application_name", LISTENER_APPLICATION_NAME)
        kwargs.setdefault("connect_timeout", 5)
        return psycopg.connect(*args, **kwargs, autocommit=True)

    def migrate(self) -> None:
        """Hosts that start together migrate one after the other."""
        with self.engine.connect() as conn:
            conn.execute(sa.text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
            try:
                super().migrate()
            finally:
                conn.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY})
                conn.commit()

    def close(self) -> None:
        self._listener.stop()
        super().close()

    def installation_id(self) -> str:
        # Two processes starting on a new database both try to make one: the first one wins.
        with self._write() as conn:
            conn.execute(
                pg_insert(meta)
                .values(key="installation_id", value=ids.new_id())
                .on_conflict_do_nothing(index_elements=[meta.c.key])
            )
            return str(
                conn.execute(sa.select(meta.c.value).where(meta.c.key == "installation_id")).scalar_one()
            )

    def _ended(
        self, conn: sa.Connection, task_ids: Collection[str] | None, final: Sequence[Task] = ()
    ) -> None:
        """Also tell the other processes, when this transaction commits."""
        super()._ended(conn, task_ids, final)
        named = task_ids is not None and len(task_ids) <= MAX_ENDS_NAMED
        payload = ",".join(sorted(task_ids)) if named and task_ids is not None else ANY_TASK
        conn.execute(
            sa.text("SELECT pg_notify(:channel, :payload)"), {"channel": ENDS_CHANNEL, "payload": payload}
        )

    def _record_claim(self, conn: sa.Connection, task_id: str, runner_id: str) -> None:
        """The claim statement writes its event itself."""

    def hold_runner_identity(self, runner_id: str) -> RunnerIdentity:
        return hold_advisory_identity(runner_id, self.engine)

    def _claim_clusters(self, clusters: list[str]) -> object:
        return clusters

    def _plan_claim(self, conn: sa.Connection) -> None:
        """Keep the claim on the lane index whatever the statistics say. With statistics
        missing or stale (autovacuum may be off), reading a package's whole queue through
        ix_tasks_code_status and sorting it looks as cheap as a lane's first entry; without
        sorts (but the few heads', which have no other plan) only the lane index remains. The
        costs of disabled plans would also make the server compile the statement: no JIT."""
        conn.exec_driver_sql("SET LOCAL enable_sort = off; SET LOCAL jit = off")

    def _plan_listing(self, conn: sa.Connection) -> None:
        """Walk the listing index in its order. With statistics missing or stale (autovacuum
        may be off), the planner takes a project's tasks for a handful and gathers them all
        (a bitmap scan) to sort them: a full read of a deep queue for one page. (The costs of
        disabled plans would also make it compile the query: no JIT.)"""
        conn.exec_driver_sql(
            "SET LOCAL enable_bitmapscan = off; SET LOCAL enable_sort = off; SET LOCAL jit = off"
        )

    def _cancel_queued(self, conn: sa.Connection, code_id: str, msg: str, detail: str) -> int:
        """One statement: the tasks cancelled and their events, whatever claims run meanwhile."""
        now = timeutil.now()
        cancelled = (
            tasks.update()
            .where(queued_of(code_id), enterable(TaskStatus.CANCELLED))
            .values(status=TaskStatus.CANCELLED.value, **cancelled_values(msg, now))
            .returning(tasks.c.id)
            .cte("cancelled")
        )
        logged = cancelled_events(cancelled, now, detail)
        count = sa.select(sa.func.count()).select_from(cancelled).add_cte(logged.cte("logged"))
        cancelled_count = int(conn.execute(count).scalar_one())
        if cancelled_count:
            self._ended(conn, None)
        return cancelled_count

    # --- wake-ups -------------------------------------------------------------------------------

    def wait_for_work(self, timeout: float) -> None:
        self._listener.start()
        super().wait_for_work(timeout)

    def on_task_end(self, listener: EndListener) -> Callable[[], None]:
        self._listener.start()
        return super().on_task_end(listener)

    def listen(self, timeout: float = 5.0) -> bool:
        """Start listening for notifications now rather than at the first ``wait_for_work``;
        returns whether the listener is connected within ``timeout`` seconds."""
        self._listener.start()
        return self._listener.connected.wait(timeout)


class NotifyListener:
    """A thread holding one autocommit connection, outside the pool, that LISTENs on
    ``dockworker_tasks`` (setting the store's work signal for every notification) and on
    ``dockworker_task_ends`` (telling the store's task-end listeners). It reconnects after any
    connection error, backing off up to a few seconds, and signals both after every
    (re)connection, since notifications sent while it was away are lost."""

    def __init__(
        self, connect: Callable[[], psycopg.Connection[Any]], signal: WorkSignal, ends: TaskEnds
    ) -> None:
        self._connect = connect
        self._signal = signal
        self._ends = ends
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._interrupt_r, self._interrupt_w = socket.socketpair()
        self.connected = threading.Event()

    def start(self) -> None:
        with self._lock:
            if self._thread is not None or self._stopping.is_set():
                return
            self._thread = threading.Thread(target=self._run, name="store-listener", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        with self._lock:
            if self._stopping.is_set():
                return
            self._stopping.set()
            thread, self._thread = self._thread, None
        self._interrupt_w.send(b"x")
        if thread is not None:
            thread.join(10)
        self._interrupt_r.close()
        self._interrupt_w.close()

    def _run(self) -> None:
        delay = _RECONNECT_FIRST_S
        while not self._stopping.is_set():
            try:
                with self._connect() as conn:
                    conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    conn.execute(f"LISTEN {ENDS_CHANNEL}")
                    delay = _RECONNECT_FIRST_S
                    self.connected.set()
                    self._signal.notify()
                    self._ends.announce(None)
                    self._relay(conn)
            except (psycopg.Error, OSError) as exc:
                log.warning("store.listener_lost: %s; reconnecting in %.1f s", exc, delay)
            except Exception:
                log.exception("store.listener_failed; restarting in %.1f s", delay)
            self.connected.clear()
            if self._stopping.wait(delay):
                break
            delay = min(delay * 2, _RECONNECT_MAX_S)

    def _relay(self, conn: psycopg.Connection[Any]) -> None:
        """Turn notifications into signals until stopped; raises when the connection fails.
        A quiet connection is checked with ``SELECT 1`` so that a dead one is noticed."""
        with selectors.DefaultSelector() as selector:
            selector.register(conn.fileno(), selectors.EVENT_READ, "database")
            selector.register(self._interrupt_r, selectors.EVENT_READ, "interrupt")
            while not self._stopping.is_set():
                ready = {key.data for key, _ in selector.select(_LIVENESS_S)}
                if "interrupt" in ready:
                    return
                if not ready:
                    conn.execute("SELECT 1")
                # Also collects the notifications that arrived during the SELECT.
                work = False
                for notification in conn.notifies(timeout=0):
                    if notification.channel == ENDS_CHANNEL:
                        payload = notification.payload
                        self._ends.announce(None if payload == ANY_TASK else payload.split(","))
                    else:
                        work = True
                if work:
                    self._signal.notify()
