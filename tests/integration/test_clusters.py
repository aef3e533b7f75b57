"""Clusters through the HTTP API on both store dialects: who may create, see, change, share and
delete them; their tokens (shown once, digests only, rotated and revoked at once); tasks and
schedules that name a cluster their project may not use; clusters that take encrypted payloads
only."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from dockworker import ids, payload_crypto
from dockworker.api import create_app
from dockworker.settings import Settings
from dockworker.store import Store
from tests.helpers import Upload, make_zip

CODE = "a-code"


@dataclass
class Project:
    id: str
    token: str


@dataclass
class World:
    client: TestClient
    store: Store
    a: Project
    b: Project
    c: Project
    admin: str

    def call(self, token: str, method: str, path: str, **kwargs: Any) -> Any:
        return self.client.request(method, path, headers={"Authorization": f"OAuth {token}"}, **kwargs)

    def make_cluster(self, owner: Project, **body: Any) -> dict[str, Any]:
        response = self.call(owner.token, "POST", "/2/clusters", json={"name": "edge", **body})
        assert response.status_code == 200, response.text
        cluster: dict[str, Any] = response.json()["cluster"]
        return cluster

    def queue(self, who: Project, cluster: str, payload: str = "p") -> Any:
        body = {"tasks": [{"code_name": CODE, "cluster": cluster, "payload": payload}]}
        return self.call(who.token, "POST", f"/2/projects/{who.id}/tasks", json=body)


def _project(client: TestClient, store: Store, name: str) -> Project:
    project = store.create_project(name).id
    token, _ = store.create_token(project, name)
    upload = json.dumps({"name": CODE, "stack": "busybox", "command": "true"})
    files: Upload = {"data": (None, upload), "file": ("c.zip", make_zip({"run.sh": "x"}))}
    answer = client.post(
        f"/2/projects/{project}/codes", files=files, headers={"Authorization": f"OAuth {token}"}
    )
    assert answer.status_code == 200, answer.text
    return Project(project, token)


@pytest.fixture
def world(settings: Settings, store: Store) -> Iterator[World]:
    with TestClient(create_app(settings, store)) as client:
        a, b, c = (_project(client, store, name) for name in ("a", "b", "c"))
        admin, _ = store.create_token(None, "admin")
        yield World(client, store, a, b, c, admin)


def test_a_project_creates_a_cluster_and_its_token_is_shown_once(world: World) -> None:
    cluster = world.make_cluster(world.a, memory_mb=256, description="the edge hosts")
    assert cluster["project_id"] == world.a.id and cluster["memory"] == 256 * 1024 * 1024
    assert cluster["token_active"] is True and cluster["owner"] is True and cluster["shared_to"] == []
    token = cluster["token"]
    assert world.store.authenticate_cluster(token) is not None
    shown = world.call(world.a.token, "GET", f"/2/clusters/{cluster['id']}").json()["cluster"]
    assert "token" not in shown and shown["description"] == "the edge hosts"
    listed = world.call(world.a.token, "GET", "/2/clusters").json()["clusters"]
    assert [c["id"] for c in listed] == [cluster["id"]] and "token" not in listed[0]
    with world.store.engine.connect() as conn:  # type: ignore[attr-defined]
        stored = conn.execute(sa.text("SELECT token_digest FROM clusters")).scalar_one()
    assert token not in str(stored) and stored == ids.token_digest(token)


def test_memory_defaults_and_bad_input_is_refused(world: World) -> None:
    assert world.make_cluster(world.a)["memory_mb"] == 512
    assert world.make_cluster(world.a, name="big", memory=2 * 1024**3)["memory_mb"] == 2048
    for body, message in [
        ({"name": "edge"}, "already has a cluster named 'edge'"),
        ({"name": ""}, "name must be 1 to 100 characters"),
        ({"name": "a/b"}, "without slashes"),
        ({"name": "x", "memory": 1}, "between 16 MB and 1 TB"),
        ({"name": "x", "memory": 10**9, "memory_mb": 100}, "not both"),
        ({"name": "x", "public_key": "not a key"}, "not a PEM public key"),
        ({"name": "x", "colour": "red"}, "unknown field"),
    ]:
        response = world.call(world.a.token, "POST", "/2/clusters", json=body)
        assert response.status_code in (400, 409), response.text
        assert message in response.json()["msg"], (body, response.text)
    assert len(world.store.list_clusters(world.a.id)) == 2


def test_other_projects_see_nothing_until_shared_and_never_change_it(world: World) -> None:
    a, b, c = world.a, world.b, world.c
    cluster = world.make_cluster(a)
    path = f"/2/clusters/{cluster['id']}"
    assert world.call(b.token, "GET", path).status_code == 404
    assert world.call(b.token, "GET", "/2/clusters").json() == {"clusters": []}
    assert world.queue(b, cluster["id"]).status_code == 404
    for method, suffix, body in [
        ("PUT", "", {"name": "mine"}),
        ("DELETE", "", None),
        ("POST", "/share", {"project_id": b.id}),
        ("POST", "/credentials", None),
        ("DELETE", "/credentials", None),
        ("GET", "/stats", None),
    ]:
        response = world.call(b.token, method, path + suffix, json=body)
        assert response.status_code == 404, (method, suffix, response.text)

    shared = world.call(a.token, "POST", path + "/share", json={"project_id": b.id}).json()["cluster"]
    assert shared["shared_to"] == [b.id]
    seen = world.call(b.token, "GET", path).json()["cluster"]
    assert seen["owner"] is False and "shared_to" not in seen  # b does not learn who else uses it
    assert world.queue(b, cluster["id"]).status_code == 200
    assert world.queue(c, cluster["id"]).status_code == 404
    for method, suffix, body in [
        ("PUT", "", {"name": "mine"}),
        ("DELETE", "", None),
        ("POST", "/share", {"project_id": c.id}),
        ("POST", "/credentials", None),
        ("DELETE", "/credentials", None),
    ]:
        response = world.call(b.token, method, path + suffix, json=body)
        assert response.status_code == 403, (method, suffix, response.text)
    assert world.call(b.token, "GET", path + "/stats").json()["cluster"]["queued"] == 1

    world.call(a.token, "POST", f"{path}/unshare/{b.id}")
    assert world.queue(b, cluster["id"]).status_code == 404
    assert world.call(b.token, "GET", path).status_code == 404


def test_schedules_are_checked_like_tasks(world: World) -> None:
    cluster = world.make_cluster(world.a)
    body = {"schedules": [{"code_name": CODE, "run_every": 3600, "cluster": cluster["id"]}]}
    assert (
        world.call(world.b.token, "POST", f"/2/projects/{world.b.id}/schedules", json=body).status_code == 404
    )
    made = world.call(world.a.token, "POST", f"/2/projects/{world.a.id}/schedules", json=body)
    assert made.status_code == 200, made.text


def test_a_cluster_in_use_cannot_be_deleted(world: World) -> None:
    cluster = world.make_cluster(world.a)
    path = f"/2/clusters/{cluster['id']}"
    task = world.queue(world.a, cluster["id"]).json()["tasks"][0]["id"]
    refused = world.call(world.a.token, "DELETE", path)
    assert refused.status_code == 409 and "1 queued or running task" in refused.json()["msg"]
    world.call(world.a.token, "POST", f"/2/projects/{world.a.id}/tasks/{task}/cancel")
    schedule = {"schedules": [{"code_name": CODE, "run_every": 3600, "cluster": cluster["id"]}]}
    world.call(world.a.token, "POST", f"/2/projects/{world.a.id}/schedules", json=schedule)
    refused = world.call(world.a.token, "DELETE", path)
    assert refused.status_code == 409 and "schedule" in refused.json()["msg"]
    for listed in world.call(world.a.token, "GET", f"/2/projects/{world.a.id}/schedules").json()["schedules"]:
        world.call(world.a.token, "POST", f"/2/projects/{world.a.id}/schedules/{listed['id']}/cancel")
    assert world.call(world.a.token, "DELETE", path).json() == {"msg": "Deleted"}
    assert world.call(world.a.token, "GET", path).status_code == 404


def test_rotation_and_revocation_take_effect_at_once(world: World) -> None:
    cluster = world.make_cluster(world.a)
    path = f"/2/clusters/{cluster['id']}/credentials"
    first = cluster["token"]
    rotated = world.call(world.a.token, "POST", path).json()["cluster"]
    assert world.store.authenticate_cluster(first) is None
    found = world.store.authenticate_cluster(rotated["token"])
    assert found is not None and found.id == cluster["id"]
    revoked = world.call(world.a.token, "DELETE", path).json()["cluster"]
    assert revoked["token_active"] is False and world.store.authenticate_cluster(rotated["token"]) is None
    again = world.call(world.a.token, "POST", path).json()["cluster"]
    assert again["token_active"] is True and world.store.authenticate_cluster(again["token"]) is not None


def test_cluster_tokens_reach_no_project_route_and_project_tokens_no_runner_route(world: World) -> None:
    token = world.make_cluster(world.a)["token"]
    for method, path in [
        ("GET", f"/2/projects/{world.a.id}/tasks"),
        ("GET", "/2/clusters"),
        ("GET", "/2/runners"),
    ]:
        assert world.call(token, method, path).status_code == 401, path
    hello = {"name": "r", "host": "h", "slots": 1, "version": "x"}
    for who in (world.a.token, world.admin):
        assert world.call(who, "POST", "/2/runner/session", json=hello).status_code == 401


def test_admin_sees_and_manages_every_cluster(world: World) -> None:
    mine = world.make_cluster(world.a)
    made = world.call(world.admin, "POST", "/2/clusters", json={"name": "ops", "project_id": world.b.id})
    assert made.status_code == 200 and made.json()["cluster"]["project_id"] == world.b.id
    assert world.call(world.admin, "POST", "/2/clusters", json={"name": "x"}).status_code == 400
    listed = {c["id"] for c in world.call(world.admin, "GET", "/2/clusters").json()["clusters"]}
    assert listed == {mine["id"], made.json()["cluster"]["id"]}
    renamed = world.call(world.admin, "PUT", f"/2/clusters/{mine['id']}", json={"name": "renamed"})
    assert renamed.json()["cluster"]["name"] == "renamed"


def test_a_cluster_with_a_key_takes_encrypted_payloads_only(world: World) -> None:
    private, public = payload_crypto.generate_key_pair(2048)
    cluster = world.make_cluster(world.a, public_key=public)
    assert cluster["encrypted_payloads"] is True
    refused = world.queue(world.a, cluster["id"], payload='{"secret": 1}')
    assert refused.status_code == 400 and "encrypted payloads only" in refused.json()["msg"]
    sealed = payload_crypto.encrypt('{"secret": 1}', public)
    queued = world.queue(world.a, cluster["id"], payload=sealed)
    assert queued.status_code == 200, queued.text
    task = world.store.load_task(queued.json()["tasks"][0]["id"])
    assert task.payload == sealed and "secret" not in task.payload
    key = payload_crypto.load_private_key(private.encode())
    assert payload_crypto.decrypt(task.payload, key) == '{"secret": 1}'
    cleared = world.call(world.a.token, "PUT", f"/2/clusters/{cluster['id']}", json={"public_key": ""})
    assert cleared.json()["cluster"]["encrypted_payloads"] is False
    assert world.queue(world.a, cluster["id"], payload="clear").status_code == 200


def test_plain_cluster_names_are_still_free_for_store_runners(world: World) -> None:
    """A value that is not a registered cluster's id is a name that runners attached to the store
    serve (``dockworker runner --cluster gpu``), as before clusters existed."""
    assert world.queue(world.b, "gpu").status_code == 200
    assert world.queue(world.b, ids.new_id()).status_code == 200  # nobody's cluster: just a name
