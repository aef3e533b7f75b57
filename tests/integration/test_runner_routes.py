"""The runner routes (``/2/runner/...``) on both store dialects: what a cluster token may reach
(its cluster's tasks, and among them those leased to the calling runner), one live process per
runner id, reports that a retried request writes once, and a claim that waits for work.

Every runner route of the app is tried (a new one without a case here fails the sweep)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient

from dockworker.api import create_app, runner_api
from dockworker.runner.remote_http import ApiClient
from dockworker.settings import Settings
from dockworker.states import EventKind, TaskStatus
from dockworker.store import Store
from tests.helpers import Upload, make_zip
from tests.integration.live_server import serving
from tests.integration.test_tenancy import app_routes

CODE = "a-code"
RUNNER = "/2/runner"
# Every runner route, with a valid body: only the caller's credentials can make it fail.
RUNNER_ROUTES: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", RUNNER + "/session"): {"json": {"name": "x", "host": "h", "slots": 1, "version": "v"}},
    ("DELETE", RUNNER + "/session"): {},
    ("POST", RUNNER + "/heartbeat"): {"json": {"running": []}},
    ("POST", RUNNER + "/claim"): {"json": {"wait_s": 0}},
    ("GET", RUNNER + "/tasks/{task_id}"): {},
    ("GET", RUNNER + "/leased"): {},
    ("GET", RUNNER + "/cancels"): {},
    ("POST", RUNNER + "/active"): {"json": {"task_ids": []}},
    ("GET", RUNNER + "/revisions/{revision_id}"): {},
    ("GET", RUNNER + "/revisions/{revision_id}/archive"): {},
    ("POST", RUNNER + "/tasks/{task_id}/running"): {"json": {"start_time": 1.0, "container_id": "c"}},
    ("POST", RUNNER + "/tasks/{task_id}/unreported_start"): {"json": {"container_id": "c"}},
    ("POST", RUNNER + "/tasks/{task_id}/finish"): {"json": {"status": "complete", "msg": "", "exit_code": 0}},
    ("POST", RUNNER + "/tasks/{task_id}/requeue"): {"json": {"reason": "r"}},
    ("POST", RUNNER + "/tasks/{task_id}/release"): {"json": {"reason": "r"}},
    ("POST", RUNNER + "/tasks/{task_id}/log"): {"params": {"start": 0}, "content": b"x"},
    ("POST", RUNNER + "/tasks/{task_id}/events"): {"json": {"kind": "readopted", "detail": "d"}},
    ("POST", RUNNER + "/tasks/{task_id}/progress"): {"json": {"percent": 50, "msg": "half"}},
}


@dataclass
class Runner:
    """A runner's credentials, as a remote runner holds them after opening its session."""

    token: str
    runner_id: str = ""
    session: str = ""

    @property
    def headers(self) -> dict[str, str]:
        headers = {"Authorization": f"OAuth {self.token}"}
        if self.session:
            headers |= {"X-Runner-Id": self.runner_id, "X-Runner-Session": self.session}
        return headers


@dataclass
class World:
    client: TestClient
    store: Store
    project: str
    project_token: str
    cluster: str
    other_cluster: str
    cluster_token: str
    other_token: str

    def call(self, who: Runner | str | None, method: str, path: str, **kwargs: Any) -> Any:
        headers = {"Authorization": f"OAuth {who}"} if isinstance(who, str) else {}
        if isinstance(who, Runner):
            headers = who.headers
        return self.client.request(method, path, headers=headers, **kwargs)

    def open(self, token: str, name: str, resume: str | None = None) -> Runner:
        runner = Runner(token)
        answer = self.call(
            runner,
            "POST",
            RUNNER + "/session",
            json={"name": name, "host": "h", "slots": 2, "version": "t", "resume": resume},
        )
        assert answer.status_code == 200, answer.text
        runner.runner_id, runner.session = answer.json()["runner_id"], answer.json()["session"]
        return runner

    def queue(self, cluster: str, payload: str = "p") -> str:
        body = {"tasks": [{"code_name": CODE, "cluster": cluster, "payload": payload}]}
        answer = self.call(self.project_token, "POST", f"/2/projects/{self.project}/tasks", json=body)
        assert answer.status_code == 200, answer.text
        return str(answer.json()["tasks"][0]["id"])

    def claim(self, runner: Runner, wait_s: float = 0) -> dict[str, Any] | None:
        answer = self.call(runner, "POST", RUNNER + "/claim", json={"wait_s": wait_s})
        assert answer.status_code == 200, answer.text
        task: dict[str, Any] | None = answer.json()["task"]
        return task


@pytest.fixture
def world(settings: Settings, store: Store) -> Iterator[World]:
    settings = settings.replace(lease_ttl_s=2.0)
    with TestClient(create_app(settings, store)) as client:
        project = store.create_project("p").id
        token, _ = store.create_token(project, "t")
        upload = json.dumps({"name": CODE, "stack": "busybox", "command": "true"})
        files: Upload = {"data": (None, upload), "file": ("c.zip", make_zip({"run.sh": "x"}))}
        answer = client.post(
            f"/2/projects/{project}/codes", files=files, headers={"Authorization": f"OAuth {token}"}
        )
        assert answer.status_code == 200, answer.text
        cluster_token, cluster = store.create_cluster(project, "edge", 256)
        other_token, other = store.create_cluster(project, "other", 256)
        yield World(client, store, project, token, cluster.id, other.id, cluster_token, other_token)


def test_the_route_list_is_complete(world: World) -> None:
    routes = {(m, p) for m, p in app_routes(world.client.app) if p.startswith(RUNNER + "/")}
    assert routes == set(RUNNER_ROUTES), "a runner route was added or removed: update RUNNER_ROUTES"


def test_every_runner_route_refuses_what_is_not_a_runner_of_the_cluster(world: World) -> None:
    admin, _ = world.store.create_token(None, "admin")
    mine = world.open(world.cluster_token, "mine")
    task = world.queue(world.cluster)
    claimed = world.claim(mine)
    assert claimed is not None and claimed["id"] == task
    ids = {"task_id": task, "revision_id": claimed["revision_id"]}
    no_session = Runner(world.cluster_token)
    stolen = Runner(world.other_token, mine.runner_id, mine.session)  # another cluster's token
    forged = Runner(world.cluster_token, mine.runner_id, "not-the-session")
    before = world.store.load_task(task)
    for (method, path), body in sorted(RUNNER_ROUTES.items(), key=lambda r: (r[0][1].endswith("session"), r)):
        url = path.format(**ids)
        for who in (None, world.project_token, admin, "not-a-token"):
            answer = world.call(who, method, url, **body)
            assert answer.status_code == 401, (method, path, who, answer.text)
        if path != RUNNER + "/session" or method != "POST":
            assert world.call(no_session, method, url, **body).status_code == 401, (method, path)
            for impostor in (stolen, forged):
                answer = world.call(impostor, method, url, **body)
                assert answer.status_code == 409, (method, path, answer.text)
                assert "session" in answer.json()["msg"]
    after = world.store.load_task(task)
    assert (after.status, after.log_size, after.runner_id) == (
        before.status,
        before.log_size,
        before.runner_id,
    )


def test_a_runner_claims_only_its_clusters_tasks_and_touches_only_its_leases(world: World) -> None:
    elsewhere = world.queue(world.other_cluster)
    plain = world.queue("default")
    ours = world.queue(world.cluster)
    first = world.open(world.cluster_token, "first")
    second = world.open(world.cluster_token, "second")
    claimed = world.claim(first)
    assert claimed is not None and claimed["id"] == ours
    assert world.claim(first) is None and world.claim(second) is None  # not the others' tasks
    revision = claimed["revision_id"]
    for method, path, body in [
        ("GET", f"/tasks/{ours}", {}),
        ("GET", f"/revisions/{revision}", {}),
        ("GET", f"/revisions/{revision}/archive", {}),
        ("POST", f"/tasks/{ours}/events", {"json": {"kind": "readopted"}}),
    ]:
        assert world.call(second, method, RUNNER + path, **body).status_code == 404, path
    assert (
        world.call(
            second, "POST", RUNNER + f"/tasks/{ours}/log", params={"start": 0}, content=b"x"
        ).status_code
        == 409
    )
    done = {"status": "complete", "msg": "", "exit_code": 0}
    assert world.call(second, "POST", RUNNER + f"/tasks/{ours}/finish", json=done).json() == {"ok": False}
    assert world.call(second, "POST", RUNNER + f"/tasks/{ours}/release", json={"reason": "r"}).json() == {
        "ok": False
    }
    assert world.call(second, "POST", RUNNER + f"/tasks/{ours}/requeue", json={"reason": "r"}).json() == {
        "task": None
    }
    assert world.call(second, "POST", RUNNER + "/heartbeat", json={"running": [ours]}).json() == {
        "leased": []
    }
    assert world.store.load_task(ours).status is TaskStatus.PREPARING
    # The reaper's question: ids of other clusters (or no task at all) are not its to judge.
    answer = world.call(
        second, "POST", RUNNER + "/active", json={"task_ids": [ours, elsewhere, plain, "x" * 24]}
    )
    assert set(answer.json()["task_ids"]) == {ours, elsewhere, plain, "x" * 24}
    world.store.request_cancel(world.project, ours)
    world.call(first, "POST", RUNNER + f"/tasks/{ours}/finish", json={"status": "cancelled", "msg": "c"})
    answer = world.call(second, "POST", RUNNER + "/active", json={"task_ids": [ours, elsewhere]})
    assert answer.json()["task_ids"] == [elsewhere]
    assert world.call(first, "GET", RUNNER + "/leased").json() == {"task_ids": []}


def test_reports_repeated_by_a_retrying_runner_are_written_once(world: World) -> None:
    runner = world.open(world.cluster_token, "r")
    task = world.queue(world.cluster)
    assert world.claim(runner) is not None
    running = {"start_time": 1234.5, "container_id": "c" * 64}
    for _ in range(2):
        assert world.call(runner, "POST", RUNNER + f"/tasks/{task}/running", json=running).json() == {
            "ok": True
        }
    # the last: a retry whose first try was written, carrying what the runner had since
    sends = [(0, b"one\n"), (0, b"one\n"), (4, b"two\n"), (4, b"two\n"), (4, b"two\nthree\n")]
    for start, chunk in sends:
        answer = world.call(
            runner, "POST", RUNNER + f"/tasks/{task}/log", params={"start": start}, content=chunk
        )
        assert answer.json() == {"log_size": start + len(chunk)}
    done = {"status": "complete", "msg": "done", "exit_code": 0}
    for _ in range(2):
        assert world.call(runner, "POST", RUNNER + f"/tasks/{task}/finish", json=done).json() == {"ok": True}
    assert world.store.read_log(task) == b"one\ntwo\nthree\n"
    kinds = [e.kind for e in world.store.list_events(task)]
    assert kinds.count(EventKind.STARTED) == 1 and kinds.count(EventKind.COMPLETE) == 1
    assert EventKind.LATE_REPORT_REFUSED not in kinds
    assert world.store.load_task(task).attempts == 1


def test_bad_reports_are_refused(world: World) -> None:
    runner = world.open(world.cluster_token, "r")
    task = world.queue(world.cluster)
    world.claim(runner)
    cases: list[tuple[str, dict[str, Any], str]] = [
        (f"/tasks/{task}/finish", {"json": {"status": "running", "msg": ""}}, "not a task outcome"),
        (
            f"/tasks/{task}/finish",
            {"json": {"status": "complete", "msg": "", "extra": 1}},
            "unknown outcome fields",
        ),
        (f"/tasks/{task}/events", {"json": {"kind": "complete"}}, "a runner records only"),
        (f"/tasks/{task}/log", {"params": {"start": 0}, "content": b""}, "empty log chunk"),
        ("/claim", {"json": {"wait_s": 31}}, "wait_s must be between 0 and 30"),
        ("/active", {"json": {"task_ids": ["x"] * 10_001}}, "at most 10000"),
    ]
    for path, body, message in cases:
        answer = world.call(runner, "POST", RUNNER + path, **body)
        assert answer.status_code == 400 and message in answer.json()["msg"], (path, answer.text)
    assert world.store.load_task(task).status is TaskStatus.PREPARING


def test_one_live_process_per_runner_id(world: World) -> None:
    first = world.open(world.cluster_token, "same")
    hello = {"name": "same", "host": "other-host", "slots": 1, "version": "v"}
    refused = world.call(world.cluster_token, "POST", RUNNER + "/session", json=hello)
    assert refused.status_code == 409 and "already running (on h" in refused.json()["msg"]
    # The same runner restarted (it kept its secret) takes its session back at once.
    resumed = world.open(world.cluster_token, "same", resume=first.session)
    assert resumed.runner_id == first.runner_id
    assert world.call(first, "GET", RUNNER + "/leased").status_code == 409  # the old process is out
    # Another cluster's runner of the same name is another runner.
    assert world.open(world.other_token, "same").runner_id != first.runner_id
    # An expired session (its runner cut off longer than a lease) may be taken over ...
    time.sleep(2.1)
    taker = world.open(world.cluster_token, "same")
    assert world.call(resumed, "POST", RUNNER + "/heartbeat", json={"running": []}).status_code == 409
    assert world.call(taker, "POST", RUNNER + "/heartbeat", json={"running": []}).status_code == 200
    # ... and one that ended cleanly is free at once.
    world.call(taker, "DELETE", RUNNER + "/session")
    world.open(world.cluster_token, "same")


def test_a_waiting_claim_is_woken_by_the_enqueue(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fallback re-check is pushed beyond the wait: only the enqueue's wake-up can answer
    the claim with the task."""
    monkeypatch.setattr(runner_api, "WAKE_CHECK_S", 60.0)
    runner = world.open(world.cluster_token, "waiter")
    got: list[dict[str, Any] | None] = []
    with serving(world.client.app) as port:
        client = ApiClient([f"http://127.0.0.1:{port}"], world.cluster_token)
        client.session_headers = {"X-Runner-Id": runner.runner_id, "X-Runner-Session": runner.session}
        thread = threading.Thread(
            target=lambda: got.append(
                client.call("POST", RUNNER + "/claim", payload={"wait_s": 20}, timeout=40).json()["task"]
            )
        )
        thread.start()
        time.sleep(0.3)  # the claim is waiting (an earlier enqueue would be found at once anyway)
        task = world.queue(world.cluster)
        thread.join(30)
        client.close()
    assert got and got[0] is not None and got[0]["id"] == task


def test_a_runner_gets_the_code_and_secrets_of_its_leased_tasks_only(world: World) -> None:
    runner = world.open(world.cluster_token, "r")
    task = world.queue(world.cluster)
    claimed = world.claim(runner)
    assert claimed is not None
    revision = world.call(runner, "GET", RUNNER + f"/revisions/{claimed['revision_id']}").json()["revision"]
    archive = world.call(runner, "GET", RUNNER + f"/revisions/{claimed['revision_id']}/archive")
    assert archive.headers["content-type"] == "application/zip"
    import hashlib

    assert hashlib.sha256(archive.content).hexdigest() == revision["checksum"]
    world.call(runner, "POST", RUNNER + f"/tasks/{task}/release", json={"reason": "r"})
    assert world.call(runner, "GET", RUNNER + f"/revisions/{claimed['revision_id']}").status_code == 404
