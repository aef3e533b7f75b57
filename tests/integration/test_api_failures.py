"""The API when things fail, through a real HTTP server (uvicorn) on a real store: every error
is a ``{"msg": ...}`` answer on a connection that stays open; a database gone is 503; a full
disk is 507 for writes while reads go on, and writes come back by themselves; a huge header is
431; times beyond any column are 400 on every dialect."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from dockworker.api import create_app
from dockworker.models import CodeSpec
from dockworker.settings import Settings
from dockworker.store import Store, open_store
from dockworker.store.schema import tokens
from dockworker.store.sql import SqlStore
from tests.conftest import require
from tests.helpers import save_code
from tests.integration.live_server import LiveServer, Relay
from tests.pgdb import PG_URL, Databases, libpq_url


@dataclass
class Tenant:
    project: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"OAuth {self.token}", "Content-Type": "application/json"}


def _tenant(store: Store) -> Tenant:
    project = store.create_project("p").id
    token, _ = store.create_token(project, "t")
    save_code(store, project, CodeSpec(name="c", stack="busybox", command="true"))
    return Tenant(project, token)


class Client:
    """One keep-alive connection; ``socket`` tells whether it is still the same one."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def call(self, method: str, path: str, headers: dict[str, str], body: Any = None) -> tuple[int, Any]:
        payload = None if body is None else json.dumps(body)
        self.conn.request(method, path, body=payload, headers=headers)
        response = self.conn.getresponse()
        data = response.read()
        assert response.getheader("connection") != "close"
        return response.status, json.loads(data)

    @property
    def socket(self) -> object:
        return self.conn.sock

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.conn.close()


def _tasks(count: int, payload_bytes: int = 0) -> dict[str, Any]:
    return {"tasks": [{"code_name": "c", "payload": "x" * payload_bytes} for _ in range(count)]}


# --- 500 and keep-alive ---------------------------------------------------------------------------


def test_an_unexpected_error_is_a_500_on_a_connection_that_stays_open(
    settings: Settings, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    tenant = _tenant(store)
    assert isinstance(store, SqlStore)
    with LiveServer(create_app(settings, store)) as server, Client(server.port) as client:
        status, body = client.call("POST", f"/2/projects/{tenant.project}/tasks", tenant.headers, _tasks(1))
        assert status == 200
        task = body["tasks"][0]["id"]
        first = client.socket
        with store.engine.begin() as conn:  # a real fault: a table gone from under the store
            conn.exec_driver_sql("DROP TABLE task_events")
        status, body = client.call("GET", f"/2/projects/{tenant.project}/tasks/{task}/events", tenant.headers)
        assert (status, body) == (500, {"msg": "Internal server error"})
        status, body = client.call("GET", f"/2/projects/{tenant.project}/tasks/{task}", tenant.headers)
        assert status == 200 and body["id"] == task
        assert client.socket is first
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) == 1 and tracebacks[0].name == "dockworker.api"


# --- 431 ------------------------------------------------------------------------------------------


@pytest.mark.dialects("sqlite")
def test_a_huge_header_is_answered_431(settings: Settings, store: Store) -> None:
    tenant = _tenant(store)
    with LiveServer(create_app(settings, store)) as server:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        conn.request(
            "GET", f"/2/projects/{tenant.project}/codes", headers={"Authorization": "OAuth " + "a" * 2**20}
        )
        response = conn.getresponse()
        assert response.status == 431
        assert json.loads(response.read()) == {"msg": "Request header fields too large"}
        conn.close()
        with Client(server.port) as client:  # the server is fine
            assert client.call("GET", f"/2/projects/{tenant.project}/codes", tenant.headers)[0] == 200


# --- 503: the database gone -----------------------------------------------------------------------


@pytest.mark.dialects("postgresql")
def test_a_database_gone_is_a_503_and_it_comes_back(settings: Settings, store_url: str) -> None:
    url = sa.engine.make_url(store_url)
    relay = Relay((url.host or "127.0.0.1", url.port or 5432))
    relay.restore()
    relayed = open_store(url.set(port=relay.port).render_as_string(hide_password=False))
    try:
        tenant = _tenant(relayed)
        path = f"/2/projects/{tenant.project}/tasks"
        with LiveServer(create_app(settings, relayed)) as server, Client(server.port) as client:
            assert client.call("GET", path, tenant.headers)[0] == 200
            first = client.socket
            relay.cut()
            for _ in range(2):  # the pooled connection is dead, then no new one can be made
                status, body = client.call("GET", path, tenant.headers)
                assert (status, body) == (
                    503,
                    {"msg": "Service unavailable: the database cannot be reached"},
                )
                status, body = client.call("POST", path, tenant.headers, _tasks(1))
                assert status == 503, body
            assert client.socket is first
            relay.restore()
            assert client.call("POST", path, tenant.headers, _tasks(1))[0] == 200
            assert client.socket is first
    finally:
        relay.cut()
        relayed.close()


# --- 507: a full disk -----------------------------------------------------------------------------


@dataclass
class SmallDisk:
    path: Path

    def fill(self) -> None:
        with (self.path / "filler").open("wb") as filler:
            try:
                while True:
                    filler.write(b"\0" * 65536)
                    filler.flush()
            except OSError:
                pass

    def free(self) -> None:
        (self.path / "filler").unlink()


def _mount_small_disk(path: Path, size: str = "16m") -> SmallDisk:
    require(os.geteuid() == 0 and shutil.which("mount") is not None, "needs root to mount a tmpfs")
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    return SmallDisk(path)


def _unmount(path: Path) -> None:
    if subprocess.run(["umount", str(path)], check=False).returncode != 0:
        subprocess.run(["umount", "-l", str(path)], check=True)
    path.rmdir()


@pytest.fixture
def full_disk_store(
    dialect: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[Store, SmallDisk]]:
    """A store whose data lives on a small tmpfs: SQLite's file, or a PostgreSQL database in a
    tablespace of its own there (WAL and every other database stay on the server's disk)."""
    if dialect == "sqlite":
        disk = _mount_small_disk(tmp_path / "small")
        store = open_store(f"sqlite:///{disk.path / 'dockworker.db'}")
        try:
            store.migrate()
            yield store, disk
        finally:
            store.close()
            _unmount(disk.path)
        return
    databases: Databases = request.getfixturevalue("pg_databases")
    # Outside pytest's 0700 tmp directory: the server (user postgres) must reach it.
    disk = _mount_small_disk(Path(f"/tmp/dw-small-disk-{os.getpid()}"), "24m")
    space, name = f"dw_small_{os.getpid()}", f"dw_{os.getpid()}_on_small_disk"
    shutil.chown(disk.path, "postgres", "postgres")
    admin = psycopg.connect(libpq_url(PG_URL), autocommit=True)
    pg_store: Store | None = None
    try:
        admin.execute(f"CREATE TABLESPACE {space} LOCATION '{disk.path}'")
        admin.execute(f"CREATE DATABASE {name} TEMPLATE {databases.template} TABLESPACE {space}")
        pg_store = open_store(databases.url(name))
        yield pg_store, disk
    finally:
        if pg_store is not None:
            pg_store.close()
        (disk.path / "filler").unlink(missing_ok=True)
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.execute(f"DROP TABLESPACE IF EXISTS {space}")
        admin.close()
        _unmount(disk.path)


def test_a_full_disk_keeps_reads_refuses_writes_with_507_and_recovers(
    settings: Settings, full_disk_store: tuple[Store, SmallDisk], caplog: pytest.LogCaptureFixture
) -> None:
    store, disk = full_disk_store
    tenant = _tenant(store)
    spare_secret, spare = store.create_token(tenant.project, "first used on a full disk")
    spare_headers = {"Authorization": f"OAuth {spare_secret}"}
    assert isinstance(store, SqlStore)
    store._last_used.interval_s = 0.0  # write token uses at once rather than every few seconds
    base = f"/2/projects/{tenant.project}"
    with LiveServer(create_app(settings, store)) as server, Client(server.port) as client:
        status, body = client.call("POST", f"{base}/tasks", tenant.headers, _tasks(10))
        assert status == 200
        task = body["tasks"][0]["id"]
        disk.fill()
        for path in (
            f"{base}/codes",
            f"{base}/tasks",
            f"{base}/tasks/{task}",
            f"{base}/tasks/{task}/events",
        ):
            status, body = client.call("GET", path, tenant.headers)
            assert status == 200, (path, body)
        status, body = client.call("POST", f"{base}/tasks", tenant.headers, _tasks(1000, 1000))
        assert status == 507, body
        assert body == {
            "msg": "Insufficient storage: the database's disk is full: nothing was written (reads still"
            " work; writes work again by themselves once space is freed)"
        }
        listed = client.call("GET", f"{base}/tasks", tenant.headers)[1]["tasks"]
        assert len(listed) == 10  # nothing of the refused batch was written
        assert client.call("GET", f"{base}/codes", spare_headers)[0] == 200  # its use is not written
        if store.engine.dialect.name == "sqlite":  # PostgreSQL may find room in the table's page
            assert any(r.msg.startswith("store.last_used_not_written") for r in caplog.records)
        disk.free()
        status, body = client.call("POST", f"{base}/tasks", tenant.headers, _tasks(1000, 1000))
        assert status == 200, body
        assert client.call("POST", f"{base}/tasks/{task}/cancel", tenant.headers, {})[0] == 200
    with store.engine.connect() as conn:  # written once writes worked again
        written = conn.execute(sa.select(tokens.c.last_used_at).where(tokens.c.id == spare.id)).scalar()
    assert written is not None


# --- bounds ---------------------------------------------------------------------------------------


def test_times_beyond_any_column_are_400_on_every_dialect(settings: Settings, store: Store) -> None:
    tenant = _tenant(store)
    with TestClient(create_app(settings, store)) as client:
        for parameter in ("from_time", "to_time"):
            answer = client.get(
                f"/2/projects/{tenant.project}/tasks", params={parameter: 10**20}, headers=tenant.headers
            )
            assert answer.status_code == 400, answer.text
            assert parameter in answer.json()["msg"]


def test_the_task_list_pages_by_cursor(settings: Settings, store: Store) -> None:
    tenant = _tenant(store)
    with TestClient(create_app(settings, store)) as client:
        base = f"/2/projects/{tenant.project}/tasks"
        queued = client.post(base, json=_tasks(25), headers=tenant.headers).json()["tasks"]
        walked: list[str] = []
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"per_page": 10, **({"cursor": cursor} if cursor else {})}
            page = client.get(base, params=params, headers=tenant.headers).json()
            walked += [t["id"] for t in page["tasks"]]
            cursor = page.get("next_cursor")
            if cursor is None:
                break
        assert walked == [t["id"] for t in reversed(queued)]
        paged = client.get(base, params={"per_page": 10, "page": 2}, headers=tenant.headers).json()
        assert [t["id"] for t in paged["tasks"]] == walked[20:] and "next_cursor" not in paged
        refused = client.get(base, params={"cursor": "0" * 24}, headers=tenant.headers)
        assert (refused.status_code, refused.json()) == (400, {"msg": "cursor: no such task in this project"})
