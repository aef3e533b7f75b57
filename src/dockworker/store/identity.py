"""Exclusive holds that the kernel or the database server drops when their process dies: one
live process per data directory, one live runner per runner id.

* a data directory (``up``, ``server``): ``flock`` on a file in it;
* a runner id on SQLite: ``flock`` on a file beside the database;
* a runner id on PostgreSQL: a session advisory lock on a connection of its own, kept for the
  process's life. The server releases it when that session ends, so a runner killed with
  SIGKILL can be restarted at once. If the connection drops, the hold is lost: ``held()`` is
  False (the runner claims nothing) until a new connection takes the lock again.

A second holder is refused at once with :class:`AlreadyRunning`, naming the holder."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import psycopg
import sqlalchemy as sa

from ..errors import AlreadyRunning

log = logging.getLogger("dockworker.store")

# The namespace of runner identities among a database's two-key advisory locks.
ADVISORY_NAMESPACE = 0x646B7772
IDENTITY_APPLICATION_PREFIX = "dockworker-runner"
LIVENESS_S = 2.0
RECONNECT_MAX_S = 5.0
# A holder on this host whose process is gone is a session the server has not closed yet.
DEAD_HOLDER_WAIT_S = 10.0


class RunnerIdentity(Protocol):
    runner_id: str

    def held(self) -> bool:
        """Whether this process still holds the identity (claim only while it does)."""
        ...

    def release(self) -> None: ...


def holder_description() -> str:
    return f"pid {os.getpid()} on {socket.gethostname()}"


class FileLock:
    """An exclusive ``flock`` on ``path``; the file says who holds it. ``refuse`` makes the
    error raised when another process holds it, from the holder's description."""

    def __init__(self, path: Path, refuse: Callable[[str], AlreadyRunning]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise refuse(holder) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{holder_description()}\n".encode(), 0)
        self.path = path
        self._fd: int | None = fd

    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)  # closing drops the lock


DATA_DIR_LOCK_NAME = "dockworker.lock"


def hold_data_dir(data_dir: Path) -> FileLock:
    """One ``up`` or ``server`` per data directory."""

    def refuse(holder: str) -> AlreadyRunning:
        return AlreadyRunning(
            f"the data directory {data_dir} is in use by another dockworker process ({holder}); "
            "stop it first, or give this one another --data-dir"
        )

    return FileLock(data_dir / DATA_DIR_LOCK_NAME, refuse)


def _identity_refused(runner_id: str, holder: str) -> AlreadyRunning:
    return AlreadyRunning(
        f"runner {runner_id!r} is already running ({holder}); stop it first, "
        "or give this one another --runner-id"
    )


class FileIdentity:
    def __init__(self, runner_id: str, path: Path) -> None:
        self.runner_id = runner_id
        self._lock = FileLock(path, lambda holder: _identity_refused(runner_id, holder))

    def held(self) -> bool:
        return self._lock.held()

    def release(self) -> None:
        self._lock.release()


class ProcessIdentity:
    """For a database without a file (SQLite in memory): unique within this process."""

    _lock = threading.Lock()
    _held: set[str] = set()

    def __init__(self, runner_id: str) -> None:
        self.runner_id = runner_id
        with self._lock:
            if runner_id in self._held:
                raise _identity_refused(runner_id, holder_description())
            self._held.add(runner_id)
        self._holding = True

    def held(self) -> bool:
        return self._holding

    def release(self) -> None:
        with self._lock:
            if self._holding:
                self._held.discard(self.runner_id)
                self._holding = False


def _digest(runner_id: str) -> str:
    return hashlib.sha256(runner_id.encode()).hexdigest()


def hold_file_identity(runner_id: str, engine: sa.Engine) -> RunnerIdentity:
    """SQLite: a lock file beside the database."""
    database = engine.url.database
    if not database or database == ":memory:":
        return ProcessIdentity(runner_id)
    return FileIdentity(runner_id, Path(f"{database}.runner-{_digest(runner_id)[:16]}.lock"))


def advisory_key(runner_id: str) -> int:
    """The identity's 32-bit key, signed as PostgreSQL's int4."""
    return int.from_bytes(bytes.fromhex(_digest(runner_id)[:8]), "big", signed=True)


class AdvisoryLockIdentity:
    """PostgreSQL: ``pg_try_advisory_lock(namespace, key)`` on a dedicated connection, checked
    every few seconds and taken again after the connection drops."""

    def __init__(self, runner_id: str, engine: sa.Engine) -> None:
        self.runner_id = runner_id
        self._key = advisory_key(runner_id)
        args, kwargs = engine.dialect.create_connect_args(engine.url)
        application = f"{IDENTITY_APPLICATION_PREFIX} pid={os.getpid()} host={socket.gethostname()}"
        kwargs.update(application_name=application[:63], connect_timeout=5, autocommit=True)
        # A dead peer is noticed within seconds on TCP (libpq ignores these on a Unix socket).
        kwargs.update(keepalives=1, keepalives_idle=5, keepalives_interval=2, keepalives_count=3)
        self._connect_args: tuple[list[Any], dict[str, Any]] = (list(args), dict(kwargs))
        self._held = threading.Event()
        self._stopping = threading.Event()
        self._conn: psycopg.Connection[Any] | None = self._take_at_start()
        self._held.set()
        self._thread = threading.Thread(target=self._watch, name="runner-identity", daemon=True)
        self._thread.start()

    def _connect(self) -> psycopg.Connection[Any]:
        args, kwargs = self._connect_args
        return psycopg.connect(*args, **kwargs)

    def _try_lock(self, conn: psycopg.Connection[Any]) -> bool:
        row = conn.execute("SELECT pg_try_advisory_lock(%s, %s)", (ADVISORY_NAMESPACE, self._key)).fetchone()
        return bool(row and row[0])

    def _holder(self, conn: psycopg.Connection[Any]) -> str:
        row = conn.execute(
            """
            SELECT a.application_name, a.client_addr::text, a.pid
              FROM pg_locks AS l JOIN pg_stat_activity AS a ON a.pid = l.pid
             WHERE l.locktype = 'advisory' AND l.granted
               AND l.classid::bigint = (%s::bigint & 4294967295)
               AND l.objid::bigint = (%s::bigint & 4294967295) AND l.objsubid = 2
            """,
            (ADVISORY_NAMESPACE, self._key),
        ).fetchone()
        if row is None:
            return "unknown"
        name, address, backend = row
        return f"{name or 'unknown'} via {address or 'local socket'}, database session {backend}"

    def _take_at_start(self) -> psycopg.Connection[Any]:
        """Refuse at once while another live process holds the identity; wait a little for a
        holder of this host whose process has died (its session is about to end)."""
        deadline = time.monotonic() + DEAD_HOLDER_WAIT_S
        while True:
            conn = self._connect()
            try:
                if self._try_lock(conn):
                    return conn
                holder = self._holder(conn)
            except BaseException:
                conn.close()
                raise
            conn.close()
            if not _dead_local_process(holder) or time.monotonic() > deadline:
                raise _identity_refused(self.runner_id, holder)
            time.sleep(0.2)

    def held(self) -> bool:
        return self._held.is_set()

    def _watch(self) -> None:
        delay = 0.1
        while not self._stopping.wait(LIVENESS_S if self._held.is_set() else delay):
            conn = self._conn
            try:
                if conn is not None:
                    conn.execute("SELECT 1")
                    continue
                conn = self._connect()
                if self._try_lock(conn):
                    self._conn = conn
                    self._held.set()
                    delay = 0.1
                    log.info("runner.identity_regained", extra={"runner_id": self.runner_id})
                    continue
                log.warning(
                    "runner.identity_taken",
                    extra={"runner_id": self.runner_id, "holder": self._holder(conn)},
                )
                conn.close()
            except (psycopg.Error, OSError) as exc:
                if self._held.is_set():
                    log.warning(
                        "runner.identity_lost: claiming stops until it is held again",
                        extra={"runner_id": self.runner_id, "error": str(exc).strip()},
                    )
                self._held.clear()
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.close()
                self._conn = None
            delay = min(delay * 2, RECONNECT_MAX_S)

    def release(self) -> None:
        self._stopping.set()
        self._thread.join(LIVENESS_S + 5)
        conn, self._conn = self._conn, None
        self._held.clear()
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()  # ending the session drops the lock


def _dead_local_process(holder: str) -> bool:
    """Whether the holder's application name says it is a process of this host that is gone."""
    fields = dict(part.split("=", 1) for part in holder.split(" via ")[0].split() if "=" in part)
    host = fields.get("host", "")
    if not host or not socket.gethostname().startswith(host) or not fields.get("pid"):
        return False
    try:
        os.kill(int(fields["pid"]), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, ValueError):
        return False
    return False


def hold_advisory_identity(runner_id: str, engine: sa.Engine) -> RunnerIdentity:
    return AdvisoryLockIdentity(runner_id, engine)
