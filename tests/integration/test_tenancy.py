"""Tenancy, through the HTTP API on both store dialects: a project token reaches its own project
only (every route of the app is tried, so a new endpoint without a case here fails), admin
tokens manage projects and tokens, expiry and revocation take effect at once, and secret values
never leave the store."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.testclient import TestClient

from dockworker.api import create_app
from dockworker.models import TaskFilter, TaskOutcome
from dockworker.settings import Settings
from dockworker.states import TaskStatus
from dockworker.store import Store
from tests.conftest import StartRunner
from tests.helpers import Upload, make_zip, wait_for

PROJECT = "/2/projects/{project_id}"
# Every route under a project. A new one must be added here, and given a body below if it
# needs one: the sweeps then prove it answers 404 to other projects' tokens.
PROJECT_ROUTES = {
    ("GET", PROJECT),
    ("POST", PROJECT + "/codes"),
    ("GET", PROJECT + "/codes"),
    ("GET", PROJECT + "/codes/{code_id}"),
    ("DELETE", PROJECT + "/codes/{code_id}"),
    ("GET", PROJECT + "/codes/{code_id}/revisions"),
    ("GET", PROJECT + "/codes/{code_id}/download"),
    ("POST", PROJECT + "/codes/{code_id}/pause_task_queue"),
    ("POST", PROJECT + "/codes/{code_id}/resume_task_queue"),
    ("POST", PROJECT + "/codes/{code_id}/cancel_all"),
    ("GET", PROJECT + "/codes/{code_id}/stats"),
    ("POST", PROJECT + "/codes/{code_id}/webhook"),
    ("POST", PROJECT + "/tasks/webhook"),
    ("POST", PROJECT + "/tasks"),
    ("GET", PROJECT + "/tasks"),
    ("GET", PROJECT + "/tasks/{task_id}"),
    ("GET", PROJECT + "/tasks/{task_id}/events"),
    ("GET", PROJECT + "/tasks/{task_id}/log"),
    ("POST", PROJECT + "/tasks/{task_id}/cancel"),
    ("POST", PROJECT + "/tasks/{task_id}/progress"),
    ("POST", PROJECT + "/tasks/{task_id}/retry"),
    ("POST", PROJECT + "/schedules"),
    ("GET", PROJECT + "/schedules"),
    ("GET", PROJECT + "/schedules/{schedule_id}"),
    ("PUT", PROJECT + "/schedules/{schedule_id}"),
    ("POST", PROJECT + "/schedules/{schedule_id}/cancel"),
    ("POST", PROJECT + "/tokens"),
    ("GET", PROJECT + "/tokens"),
}
ADMIN_ROUTES = {("POST", "/2/projects"), ("GET", "/2/projects"), ("DELETE", "/2/tokens/{token_id}")}
SECRET_ENV = {"API_KEY": "s3cret-env-value-4242"}
SECRET_CONFIG = '{"password": "s3cret-config-value-4242"}'
SECRET_VALUES = ("s3cret-env-value-4242", "s3cret-config-value-4242")
CODE = "a-code"


def app_routes(app: Any) -> set[tuple[str, str]]:
    routes: set[tuple[str, str]] = set()
    for context in iter_route_contexts(app.routes):
        if isinstance(context.original_route, APIRoute):
            assert context.path is not None, context  # an API route always has one
            routes |= {(method, context.path) for method in context.methods or ()}
    return routes


def request_body(method: str, path: str) -> dict[str, Any]:
    """A valid request for the route, so that only the token can make it fail."""
    suffix = path.removeprefix(PROJECT)
    upload = json.dumps({"name": CODE, "stack": "busybox", "command": "sh run.sh"})
    bodies: dict[tuple[str, str], dict[str, Any]] = {
        ("POST", "/codes"): {"files": {"data": (None, upload), "file": ("c.zip", make_zip({"run.sh": "x"}))}},
        ("POST", "/tasks"): {"json": {"tasks": [{"code_name": CODE}]}},
        ("POST", "/tasks/webhook"): {"params": {"code_name": CODE}, "content": b"hook"},
        ("POST", "/codes/{code_id}/webhook"): {"content": b"hook"},
        ("POST", "/schedules"): {"json": {"schedules": [{"code_name": CODE, "run_every": 3600}]}},
        ("PUT", "/schedules/{schedule_id}"): {"json": {"code_name": CODE, "run_every": 7200}},
        ("POST", "/tasks/{task_id}/progress"): {"json": {"percent": 50, "msg": "hijacked"}},
        ("POST", "/tasks/{task_id}/retry"): {"json": {"delay": 0}},
        ("POST", "/tokens"): {"json": {"name": "stolen"}},
    }
    return bodies.get((method, suffix), {})


@dataclass
class Tenant:
    project: str
    token: str
    code_id: str
    queued_task: str
    done_task: str
    schedule_id: str
    cluster_id: str
    revision_id: str

    def ids_for(self, path: str) -> dict[str, str]:
        # the finished task where only a finished one would do (its log, a retry)
        task = self.done_task if path.endswith(("/log", "/retry")) else self.queued_task
        return {
            "code_id": self.code_id,
            "task_id": task,
            "schedule_id": self.schedule_id,
            "cluster_id": self.cluster_id,
            "revision_id": self.revision_id,
        }

    def url(self, path: str, project: str | None = None, ids: dict[str, str] | None = None) -> str:
        try:
            return path.format(project_id=project or self.project, **(ids or self.ids_for(path)))
        except KeyError as exc:
            raise AssertionError(f"{path}: a path parameter this test does not know: {exc}") from exc


@dataclass
class World:
    client: TestClient
    store: Store
    a: Tenant
    b: Tenant
    admin: str

    def call(self, token: str | None, method: str, url: str, **kwargs: Any) -> Any:
        headers = {"Authorization": f"OAuth {token}"} if token else {}
        return self.client.request(method, url, headers=headers, **kwargs)


def _tenant(client: TestClient, store: Store, name: str) -> Tenant:
    project = store.create_project(name).id
    token, _ = store.create_token(project, f"{name}-token")
    auth = {"Authorization": f"OAuth {token}"}
    base = f"/2/projects/{project}"
    data = json.dumps(
        {
            "name": CODE,
            "stack": "busybox",
            "command": "sh run.sh",
            "secret_env_vars": SECRET_ENV,
            "config": SECRET_CONFIG,
            "config_secret": True,
        }
    )
    files: Upload = {"data": (None, data), "file": ("c.zip", make_zip({"run.sh": "echo hi"}))}
    uploaded = client.post(f"{base}/codes", files=files, headers=auth)
    assert uploaded.status_code == 200, uploaded.text
    cluster = f"only-{name}"  # so that this claim takes this task
    body = {"tasks": [{"code_name": CODE, "cluster": cluster}]}
    done = client.post(f"{base}/tasks", json=body, headers=auth)
    done_id = done.json()["tasks"][0]["id"]
    claimed = store.claim(f"runner-{name}", [cluster], 30)
    assert claimed is not None and claimed.id == done_id
    store.mark_running(done_id, f"runner-{name}", time.time())
    store.append_log(done_id, f"{name}'s log\n".encode())
    store.finish(done_id, f"runner-{name}", TaskOutcome(status=TaskStatus.COMPLETE, msg="", exit_code=0))
    queued = client.post(f"{base}/tasks", json={"tasks": [{"code_name": CODE, "payload": "p"}]}, headers=auth)
    schedule = client.post(
        f"{base}/schedules",
        json={"schedules": [{"code_name": CODE, "run_every": 3600, "start_at": "2100-01-01T00:00:00Z"}]},
        headers=auth,
    )
    assert schedule.status_code == 200, schedule.text
    _, own_cluster = store.create_cluster(project, f"{name}-cluster", 256)
    return Tenant(
        project=project,
        token=token,
        code_id=uploaded.json()["id"],
        queued_task=queued.json()["tasks"][0]["id"],
        done_task=done_id,
        schedule_id=schedule.json()["schedules"][0]["id"],
        cluster_id=own_cluster.id,
        revision_id=uploaded.json()["latest_history_id"],
    )


@pytest.fixture
def world(settings: Settings, store: Store) -> Iterator[World]:
    with TestClient(create_app(settings, store)) as client:
        a, b = _tenant(client, store, "a"), _tenant(client, store, "b")
        admin, _ = store.create_token(None, "admin")
        yield World(client=client, store=store, a=a, b=b, admin=admin)


def snapshot(store: Store, project: str) -> Any:
    """Everything of the project an API call could change (not tokens' last use)."""
    codes = store.list_codes(project, 0, 100)
    tasks = store.list_tasks(project, TaskFilter(per_page=100))
    return (
        [(c.id, c.rev, c.paused, c.updated_at) for c in codes],
        [len(store.list_revisions(project, c.id, 0, 100)) for c in codes],
        [
            (t.id, t.status, t.percent, t.msg, t.cancel_requested, t.retry_task_id, t.updated_at, t.log_size)
            for t in tasks
        ],
        [len(store.list_events(t.id)) for t in tasks],
        [(s.id, s.status, s.run_every, s.updated_at) for s in store.list_schedules(project, 0, 100)],
        [(t.id, t.revoked_at) for t in store.list_tokens(project)],
    )


def test_the_route_list_is_complete(world: World) -> None:
    routes = app_routes(world.client.app)
    project_routes = {(m, p) for m, p in routes if p.startswith(PROJECT)}
    assert project_routes == PROJECT_ROUTES, "a project route was added or removed: update PROJECT_ROUTES"
    assert routes >= ADMIN_ROUTES


def test_another_projects_token_gets_404_everywhere_and_changes_nothing(world: World) -> None:
    a, b = world.a, world.b
    before = snapshot(world.store, a.project), snapshot(world.store, b.project)
    for method, path in sorted(PROJECT_ROUTES):
        response = world.call(b.token, method, a.url(path), **request_body(method, path))
        assert response.status_code == 404, f"{method} {path}: {response.status_code} {response.text}"
        assert response.json() == {"msg": "Project not found"}, f"{method} {path}"
    assert (snapshot(world.store, a.project), snapshot(world.store, b.project)) == before

    # The same URLs with the project's own token are found (the 404s were not typos), and an admin
    # token reaches them too. Deleting the code package comes last.
    for method, path in sorted(PROJECT_ROUTES, key=lambda route: (route[0] == "DELETE", route)):
        response = world.call(a.token, method, a.url(path), **request_body(method, path))
        # (some are refused for the state the sweep left, e.g. updating the cancelled schedule)
        assert response.status_code in (200, 400, 403, 409), f"{method} {path}: {response.text}"
        if method == "GET":
            assert world.call(world.admin, method, a.url(path)).status_code == 200, path


def test_own_project_path_with_another_projects_ids_gets_404(world: World) -> None:
    a, b = world.a, world.b
    before = snapshot(world.store, a.project), snapshot(world.store, b.project)
    with_ids = [(m, p) for m, p in sorted(PROJECT_ROUTES) if "_id}" in p.removeprefix(PROJECT)]
    assert len(with_ids) == 18
    for method, path in with_ids:
        url = b.url(path, ids=a.ids_for(path))
        response = world.call(b.token, method, url, **request_body(method, path))
        assert response.status_code == 404, f"{method} {path}: {response.status_code} {response.text}"
        assert set(response.json()) == {"msg"}
    # Filters and names do not reach across either.
    base = f"/2/projects/{b.project}/tasks"
    for query in (f"original_task_id={a.done_task}", f"schedule_id={a.schedule_id}"):
        assert world.call(b.token, "GET", f"{base}?{query}").json() == {"tasks": []}
    assert world.call(b.token, "GET", f"{base}/{a.queued_task}/log?follow=true").status_code == 404
    assert (snapshot(world.store, a.project), snapshot(world.store, b.project)) == before


def test_admin_token_manages_projects_and_tokens_and_project_tokens_cannot(world: World) -> None:
    a, b = world.a, world.b
    forbidden = {"msg": "This endpoint needs an admin token"}
    for method, url, body in [
        ("GET", "/2/projects", None),
        ("POST", "/2/projects", {"name": "mine"}),
        ("GET", f"/2/projects/{a.project}/tokens", None),
        ("POST", f"/2/projects/{a.project}/tokens", {"name": "more"}),
        ("DELETE", f"/2/tokens/{world.store.list_tokens(b.project)[0].id}", None),
        ("GET", "/2/runners", None),
    ]:
        response = world.call(a.token, method, url, json=body)
        assert (response.status_code, response.json()) == (403, forbidden), f"{method} {url}"
    assert [p.name for p in world.store.list_projects()] == ["a", "b"]

    created = world.call(world.admin, "POST", "/2/projects", json={"name": "c ☃", "create_token": True})
    assert created.status_code == 200, created.text
    project_c, token_c = created.json()["id"], created.json()["token"]["token"]
    listed = world.call(world.admin, "GET", "/2/projects").json()["projects"]
    assert [p["name"] for p in listed] == ["a", "b", "c ☃"]
    assert world.call(token_c, "GET", f"/2/projects/{project_c}").json()["name"] == "c ☃"
    assert world.call(token_c, "GET", f"/2/projects/{a.project}").status_code == 404

    made = world.call(world.admin, "POST", f"/2/projects/{a.project}/tokens", json={"expires_in": 3600})
    assert made.status_code == 200, made.text
    secret, token_id = made.json()["token"], made.json()["id"]
    assert made.json()["expires_at"] is not None and made.json()["active"] is True
    assert world.call(secret, "GET", f"/2/projects/{a.project}/codes").status_code == 200
    tokens = world.call(world.admin, "GET", f"/2/projects/{a.project}/tokens")
    assert secret not in tokens.text and a.token not in tokens.text
    assert [t["name"] for t in tokens.json()["tokens"]] == ["a-token", "api"]
    assert all("token" not in t for t in tokens.json()["tokens"])
    assert tokens.json()["tokens"][1]["last_used_at"] is not None

    revoked = world.call(world.admin, "DELETE", f"/2/tokens/{token_id}")
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    refused = world.call(secret, "GET", f"/2/projects/{a.project}/codes")
    assert (refused.status_code, refused.json()) == (401, {"msg": "Invalid, expired or revoked token"})
    again = world.call(world.admin, "DELETE", f"/2/tokens/{token_id}")
    assert again.json()["revoked_at"] == revoked.json()["revoked_at"]
    assert world.call(world.admin, "DELETE", "/2/tokens/000000000000000000000000").status_code == 404
    missing = world.call(world.admin, "GET", "/2/projects/000000000000000000000000/tokens")
    assert (missing.status_code, missing.json()) == (404, {"msg": "Project not found"})

    # The admin token reads any project's task, payload and log; the project's token its own.
    task = world.call(world.admin, "GET", f"/2/projects/{a.project}/tasks/{a.queued_task}").json()
    assert task["payload"] == "p"
    log = world.call(world.admin, "GET", f"/2/projects/{a.project}/tasks/{a.done_task}/log")
    assert log.text == "a's log\n"


@pytest.mark.parametrize(
    ("url", "body", "message"),
    [
        ("/2/projects", {"name": ""}, "name"),
        ("/2/projects", {"name": "a/b"}, "without slashes"),
        ("/2/projects", {"name": "x" * 201}, "at most 200"),
        ("/2/projects", {"name": "tab\there"}, "printable"),
        ("/2/projects", {"name": "x", "owner": "me"}, "unknown field"),
        ("/2/projects", {"name": 5}, "name"),
        ("{A}/tokens", {"expires_in": 0}, "expires_in"),
        ("{A}/tokens", {"expires_in": 10**12}, "expires_in"),
        ("{A}/tokens", {"expires_in": 60, "expires_at": "2100-01-01T00:00:00Z"}, "not both"),
        ("{A}/tokens", {"expires_at": "2001-01-01T00:00:00Z"}, "in the future"),
        ("{A}/tokens", {"expires_at": 10**400}, "out of range"),
        ("{A}/tokens", {"expires_at": "soon"}, "not an RFC 3339 time"),
        ("{A}/tokens", {"name": "\x00"}, "contains a NUL character"),
    ],
)
def test_bad_admin_requests_are_refused_and_store_nothing(
    world: World, url: str, body: dict[str, Any], message: str
) -> None:
    before = len(world.store.list_projects()), len(world.store.list_tokens(world.a.project))
    response = world.call(
        world.admin, "POST", url.replace("{A}", f"/2/projects/{world.a.project}"), json=body
    )
    assert response.status_code == 400, response.text
    assert message in response.json()["msg"]
    assert (len(world.store.list_projects()), len(world.store.list_tokens(world.a.project))) == before


def test_expiry_and_revocation_take_effect_at_once(world: World) -> None:
    url = f"/2/projects/{world.a.project}"
    short, _ = world.store.create_token(world.a.project, "short", expires_at=time.time() + 1.0)
    assert world.call(short, "GET", url).status_code == 200
    time.sleep(1.1)
    expired = world.call(short, "GET", url)
    assert (expired.status_code, expired.json()) == (401, {"msg": "Invalid, expired or revoked token"})

    secret, info = world.store.create_token(world.a.project, "soon revoked")
    assert world.call(secret, "GET", url).status_code == 200
    world.store.revoke_token(info.id)
    assert world.call(secret, "GET", url).status_code == 401
    assert world.call(secret, "GET", url, params={"oauth": secret}).status_code == 401


def test_tokens_are_random_and_stored_only_as_digests(store: Store) -> None:
    project = store.create_project("p").id
    secrets_ = [store.create_token(project, f"t{i}")[0] for i in range(3)]
    admin_secret, admin = store.create_token(None, "admin")
    assert len(set(secrets_)) == 3 and all(len(s) >= 43 for s in secrets_)
    with store.engine.connect() as conn:  # type: ignore[attr-defined]
        rows = [dict(r._mapping) for r in conn.execute(sa.text("SELECT * FROM tokens")).all()]
    stored = json.dumps(rows, default=str)
    for secret in [*secrets_, admin_secret]:
        assert secret not in stored
        assert hashlib.sha256(secret.encode()).hexdigest() in stored
    found = store.authenticate(admin_secret)
    assert found is not None and found.id == admin.id and found.is_admin and found.project_id is None
    assert store.authenticate("x" * 10_000) is None and store.authenticate("") is None
    assert [t.id for t in store.list_tokens(None)] == [admin.id]


def test_database_errors_never_carry_the_values(store: Store) -> None:
    """An unexpected database error is logged with its statement: never with its parameters
    (a code revision's spec holds the secret values)."""
    query = sa.text("SELECT no_such_column FROM tokens WHERE name = :name")
    with pytest.raises(sa.exc.DBAPIError) as raised, store.engine.connect() as conn:  # type: ignore[attr-defined]
        conn.execute(query, {"name": SECRET_VALUES[0]})
    assert SECRET_VALUES[0] not in str(raised.value) and "hidden" in str(raised.value)


def test_secret_values_never_appear_in_any_json_answer(world: World) -> None:
    a = world.a
    code = world.call(a.token, "GET", f"/2/projects/{a.project}/codes/{a.code_id}").json()
    assert code["secret_env_vars"] == {"API_KEY": "[FILTERED]"}
    assert code["config"] == "[FILTERED]" and code["config_secret"] is True
    spec = world.store.get_code(a.project, a.code_id).latest_revision.spec
    assert spec.secret_env_vars == SECRET_ENV and spec.config == SECRET_CONFIG
    answered = 0
    for method, path in sorted(app_routes(world.client.app)):
        if method != "GET" or path in ("/docs",):
            continue
        url = a.url(path.replace("{token_id}", "x"))
        for token in (a.token, world.admin):
            response = world.call(token, "GET", url)
            assert response.status_code < 500, f"{path}: {response.text}"
            answered += response.status_code == 200
            for secret in SECRET_VALUES:
                assert secret not in response.text, f"{path} shows a secret value"
    assert answered >= 30
    reupload = world.call(a.token, "POST", a.url(PROJECT + "/codes"), **request_body("POST", "/codes"))
    assert not any(secret in reupload.text for secret in SECRET_VALUES)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"secret_env_vars": {"TASK_ID": "x"}}, "TASK_ID is set by dockworker"),
        ({"secret_env_vars": {"1BAD": "x"}}, "not a valid environment variable name"),
        ({"secret_env_vars": {"A": 1}}, "data.secret_env_vars.A"),
        ({"env_vars": {"A": "1"}, "secret_env_vars": {"A": "2"}}, "'A' is in both"),
        ({"secret_env_vars": {"A": "x" * 70_000}}, "together are larger than 65536 bytes"),
        ({"config_secret": "yes"}, "data.config_secret"),
    ],
)
def test_bad_secret_fields_are_refused(world: World, fields: dict[str, Any], message: str) -> None:
    data = json.dumps({"name": "other", "stack": "busybox", "command": "true", **fields})
    response = world.call(
        world.a.token, "POST", f"/2/projects/{world.a.project}/codes", files={"data": (None, data)}
    )
    assert response.status_code == 400, response.text
    assert message in response.json()["msg"]
    assert "x" * 100 not in response.text
    assert world.store.find_code(world.a.project, "other") is None


@pytest.mark.docker
def test_secrets_reach_the_task_but_not_the_service_log(
    world: World, start_runner: StartRunner, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    a = world.a
    script = (
        '[ "$API_KEY" = "s3cret-env-value-4242" ] && echo env-ok\n'
        'grep -q s3cret-config-value-4242 "$CONFIG_FILE" && echo config-ok\n'
        "exit 3\n"  # a failing task: its error path is logged too
    )
    data = json.dumps(
        {
            "name": "secretive",
            "stack": "busybox",
            "command": "sh run.sh",
            "secret_env_vars": SECRET_ENV,
            "config": SECRET_CONFIG,
            "config_secret": True,
        }
    )
    files = {"data": (None, data), "file": ("c.zip", make_zip({"run.sh": script}))}
    assert world.call(a.token, "POST", f"/2/projects/{a.project}/codes", files=files).status_code == 200
    start_runner()
    queued = world.call(
        a.token, "POST", f"/2/projects/{a.project}/tasks", json={"tasks": [{"code_name": "secretive"}]}
    )
    task = wait_for(world.store, queued.json()["tasks"][0]["id"], timeout=60)
    assert task.status is TaskStatus.ERROR and task.exit_code == 3
    assert world.store.read_log(task.id) == b"env-ok\nconfig-ok\n"
    events = json.dumps([e.detail for e in world.store.list_events(task.id)])
    for secret in SECRET_VALUES:
        assert secret not in caplog.text
        assert secret not in events and secret not in (task.msg or "")
