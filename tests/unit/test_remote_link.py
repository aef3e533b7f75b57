"""RemoteLink against a scripted API (no server, no engine): what it sends when the API is away
at the wrong moment."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from dockworker.runner import remote
from dockworker.runner.remote import RemoteIdentity, RemoteLink
from dockworker.runner.remote_http import ApiClient, ApiUnreachable, Reply

SESSION = {
    "runner_id": "edge@c1",
    "session": "secret",
    "cluster_id": "c1",
    "cluster_name": "edge",
    "installation_id": "i1",
    "memory_mb": 512,
    "lease_ttl_s": 30.0,
    "heartbeat_interval_s": 5.0,
    "max_claim_wait_s": 30.0,
    "encrypted_payloads": False,
}


class ScriptedApi(ApiClient):
    """Answers the runner routes it knows; the paths in ``away`` cannot be reached."""

    def __init__(self) -> None:
        super().__init__(["http://127.0.0.1:9"], "cluster-token")
        self.sent: list[tuple[str, str, Any]] = []
        self.away: set[str] = set()

    def call(
        self,
        method: str,
        path: str,
        *,
        payload: Any = None,
        body: bytes | None = None,
        params: Mapping[str, Any] | None = None,
        timeout: float = 30.0,
        once: bool = False,
    ) -> Reply:
        if path in self.away:
            raise ApiUnreachable(f"cannot reach the dockworker API for {path}")
        self.sent.append((method, path, payload))
        answers: dict[str, Any] = {
            "/2/runner/session": SESSION,
            "/2/runner/tasks/t1/running": {"ok": True},
            "/2/runner/tasks/t1/unreported_start": {"ok": True},
            "/2/runner/tasks/t1/requeue": {"task": None},
            "/2/runner/tasks/t1/release": {"ok": True},
        }
        return Reply(200, json.dumps(answers.get(path, {"msg": "ok"})).encode())

    def paths(self) -> list[str]:
        return [path for _, path, _ in self.sent]


@pytest.fixture
def api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ScriptedApi:
    monkeypatch.setattr(remote, "URGENT_RETRY_S", 0.3)
    return ScriptedApi()


@pytest.fixture
def link(api: ScriptedApi, tmp_path: Path) -> Iterator[RemoteLink]:
    made = RemoteLink(api, tmp_path, name="edge", host="h", slots=1, version="0")
    identity = made.hold_runner_identity()
    assert isinstance(identity, RemoteIdentity)
    yield made
    identity.release()


@pytest.mark.parametrize("report", ["requeue", "release"])
def test_a_start_the_api_did_not_hear_of_is_reported_before_the_hand_back(
    api: ScriptedApi, link: RemoteLink, report: str
) -> None:
    api.away = {"/2/runner/tasks/t1/running"}
    with pytest.raises(ApiUnreachable):
        link.mark_running("t1", "edge@c1", 1.5, "container-1")
    api.away = {"/2/runner/tasks/t1/unreported_start"}  # still away: nothing is handed back yet
    with pytest.raises(ApiUnreachable):
        link.requeue_after_infra_failure("t1", "edge@c1", "lost", 5, 1.0)
    assert "/2/runner/tasks/t1/requeue" not in api.paths()

    api.away = set()
    if report == "requeue":
        link.requeue_after_infra_failure("t1", "edge@c1", "the API was away", 5, 1.0)
    else:
        link.release("t1", "edge@c1", "the API was away")
    sent = [(path, payload) for _, path, payload in api.sent if path.startswith("/2/runner/tasks/")]
    assert sent == [
        ("/2/runner/tasks/t1/unreported_start", {"container_id": "container-1", "owner": "edge@c1"}),
        (f"/2/runner/tasks/t1/{report}", {"reason": "the API was away"}),
    ]
    # a retried report does not count the start twice
    link.release("t1", "edge@c1", "again")
    assert api.paths().count("/2/runner/tasks/t1/unreported_start") == 1


def test_a_start_the_api_heard_of_is_not_reported_again(api: ScriptedApi, link: RemoteLink) -> None:
    link.mark_running("t1", "edge@c1", 1.5, "container-1")
    link.requeue_after_infra_failure("t1", "edge@c1", "lost", 5, 1.0)
    assert "/2/runner/tasks/t1/unreported_start" not in api.paths()
