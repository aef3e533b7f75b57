"""Throwaway PostgreSQL databases for the tests.

One template database per test session gets the migrations; every test then works on a copy of
it (``CREATE DATABASE ... TEMPLATE``), dropped after the test. A worker thread makes the next
copies while tests run and drops used ones in the background, so a test rarely waits for
either. The names carry the pid: test sessions running at the same time never meet."""

from __future__ import annotations

import itertools
import os
import queue
import threading

import psycopg
import sqlalchemy as sa
from psycopg import sql

from dockworker.store.postgres import PostgresStore

PG_URL = os.environ.get("DOCKWORKER_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
READY_AHEAD = 2


def libpq_url(url: str) -> str:
    return sa.engine.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


class Databases:
    def __init__(self, server_url: str = PG_URL) -> None:
        self._server = sa.engine.make_url(libpq_url(server_url))
        self._admin = psycopg.connect(libpq_url(server_url), autocommit=True, connect_timeout=3)
        self._prefix = f"dw_{os.getpid()}"
        self._numbers = itertools.count()
        self.template = f"{self._prefix}_template"
        self._ready: queue.Queue[str | Exception] = queue.Queue()
        self._jobs: queue.Queue[tuple[str, str] | None] = queue.Queue()
        self._worker: threading.Thread | None = None

    def url(self, name: str) -> str:
        return self._server.set(database=name).render_as_string(hide_password=False)

    def start(self) -> None:
        """Make the template (migrations applied), then start preparing copies."""
        self._drop(self.template)
        self._execute("CREATE DATABASE {}", self.template)
        store = PostgresStore(self.url(self.template))
        try:
            store.migrate()
        finally:
            store.close()
        self._worker = threading.Thread(target=self._work, name="pg-databases", daemon=True)
        self._worker.start()
        for _ in range(READY_AHEAD):
            self._jobs.put(("create", self._new_name()))

    def take(self) -> str:
        """A fresh, migrated database of this test's own; returns its name."""
        self._jobs.put(("create", self._new_name()))
        made = self._ready.get(timeout=120)
        if isinstance(made, Exception):
            raise made
        return made

    def give_back(self, name: str) -> None:
        self._jobs.put(("drop", name))

    def create_empty(self) -> str:
        name = self._new_name()
        self._execute("CREATE DATABASE {}", name)
        return name

    def close(self) -> None:
        self._jobs.put(None)
        if self._worker is not None:
            self._worker.join(120)
        while not self._ready.empty():
            made = self._ready.get()
            if isinstance(made, str):
                self._drop(made)
        self._drop(self.template)
        self._admin.close()

    def _work(self) -> None:
        with psycopg.connect(self._server.render_as_string(hide_password=False), autocommit=True) as conn:
            while (job := self._jobs.get()) is not None:
                action, name = job
                try:
                    if action == "create":
                        conn.execute(
                            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                                sql.Identifier(name), sql.Identifier(self.template)
                            )
                        )
                        self._ready.put(name)
                    else:
                        conn.execute(
                            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                        )
                except psycopg.Error as exc:
                    if action == "create":
                        self._ready.put(exc)

    def _new_name(self) -> str:
        return f"{self._prefix}_{next(self._numbers)}"

    def _drop(self, name: str) -> None:
        self._execute("DROP DATABASE IF EXISTS {} WITH (FORCE)", name)

    def _execute(self, statement: str, name: str) -> None:
        self._admin.execute(sql.SQL(statement).format(sql.Identifier(name)))
