"""The queue-control API: schedules, webhooks, pause/resume, cancel_all, stats, runners."""

from __future__ import annotations

from typing import Any

import pytest

from dockworker.store import Store
from tests.helpers import make_zip
from tests.integration.conftest import Api


@pytest.fixture
def code(api: Api) -> dict[str, Any]:
    response = api.upload(
        {"name": "hello", "stack": "busybox", "command": "sh hello.sh"}, make_zip({"hello.sh": "x"})
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_schedule_lifecycle(api: Api, code: dict[str, Any]) -> None:
    body = {
        "schedules": [
            {
                "code_name": "hello",
                "payload": "{}",
                "run_every": 3600,
                "run_times": 5,
                "start_at": "2030-01-01T00:00:00Z",
                "label": "nightly",
            }
        ]
    }
    created = api.call("POST", "/schedules", json=body).json()
    assert created["msg"] == "Scheduled"
    (schedule,) = created["schedules"]
    assert schedule["status"] == "scheduled" and schedule["next_start"] == "2030-01-01T00:00:00.000Z"
    assert schedule["description"] == "every 1 hour"
    assert schedule["next_runs"][:2] == ["2030-01-01T00:00:00.000Z", "2030-01-01T01:00:00.000Z"]
    assert len(schedule["next_runs"]) == 5
    fetched = api.call("GET", f"/schedules/{schedule['id']}").json()
    assert fetched["label"] == "nightly" and fetched["run_times"] == 5
    assert [s["id"] for s in api.call("GET", "/schedules").json()["schedules"]] == [schedule["id"]]
    update = {
        "code_name": "hello",
        "cron": "0 9 * * MON",
        "timezone": "Europe/Paris",
        "start_at": "2030-01-01T00:00:00+01:00",
    }
    updated = api.call("PUT", f"/schedules/{schedule['id']}", json=update).json()
    assert updated["msg"] == "Updated" and updated["cron"] == "0 9 * * MON"
    assert updated["description"] == "At 09:00 on Monday (Europe/Paris)"
    assert updated["next_start"] == "2030-01-07T08:00:00.000Z"
    cancelled = api.call("POST", f"/schedules/{schedule['id']}/cancel").json()
    assert cancelled == {"msg": "Cancelled", "status": "cancelled"}
    assert api.call("POST", f"/schedules/{schedule['id']}/cancel").status_code == 400


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ({"code_name": "hello", "run_every": 30}, "run_every must be at least 60"),
        ({"code_name": "hello", "run_every": 60, "cron": "* * * * *"}, "not both"),
        ({"code_name": "hello", "cron": "99 * * * *"}, "invalid cron"),
        ({"code_name": "hello", "cron": "* * * * *", "timezone": "Nowhere/Else"}, "unknown time zone"),
        ({"code_name": "hello", "run_every": 60, "timezone": "UTC"}, "cron schedules only"),
        ({"code_name": "hello", "start_at": "yesterday"}, "not an RFC 3339 time"),
        ({"code_name": "hello", "start_at": "2030-01-01T00:00:00"}, "no time zone offset"),
        ({"code_name": "hello", "start_at": 2000, "end_at": 1000}, "end_at is before start_at"),
        ({"code_name": "missing"}, "code package 'missing' not found"),
        ({"code_name": "hello", "run_times": 0}, "schedules.0.run_times"),
        ({"code_name": "hello", "bogus": 1}, "unknown field"),
        ({"code_name": "hello", "start_at": 10**400}, "start_at is out of range"),
        ({"code_name": "hello", "end_at": 1e300}, "end_at is out of range"),
        ({"code_name": "hello", "start_at": -1}, "start_at is out of range"),
        ({"code_name": "hello", "start_at": "9999-12-31T23:59:59-14:00"}, "out of range (1970 to 3000)"),
        ({"code_name": "hello", "run_every": 10**12}, "schedules.0.run_every"),
        ({"code_name": "hello", "run_every": 60, "run_times": 10**23}, "schedules.0.run_times"),
    ],
)
def test_bad_schedules_are_refused(
    api: Api, code: dict[str, Any], item: dict[str, Any], message: str
) -> None:
    response = api.call("POST", "/schedules", json={"schedules": [item]})
    assert 400 <= response.status_code < 500, response.text
    assert message in response.json()["msg"]
    assert api.call("GET", "/schedules").json() == {"schedules": []}


def test_python_client_schedule_fields_are_accepted(api: Api, code: dict[str, Any]) -> None:
    # what iron_worker.IronWorker.queue() sends for a scheduled task
    item = {
        "name": "hello",
        "code_name": "hello",
        "payload": "{}",
        "priority": 0,
        "delay": 0,
        "label": None,
        "cluster": None,
        "sync": False,
        "run_every": 60,
        "run_times": 2,
        "start_at": "2030-01-01T10:00:00+00:00",
        "timeout": 3600,
    }
    response = api.call("POST", "/schedules", json={"schedules": [item]})
    assert response.status_code == 200, response.text


def test_webhooks_queue_the_raw_body(api: Api, code: dict[str, Any]) -> None:
    raw = b'{"event": "push", "ref": "refs/heads/main"}'
    response = api.call("POST", "/tasks/webhook?code_name=hello&priority=2&delay=5", content=raw)
    assert response.status_code == 200, response.text
    task = api.call("GET", f"/tasks/{response.json()['id']}").json()
    assert task["payload"] == raw.decode() and task["priority"] == 2 and task["delay"] == 5
    assert response.json()["msg"] == "Queued up."
    by_code = api.call("POST", f"/codes/{code['id']}/webhook?label=gh", content=b"plain text")
    assert api.call("GET", f"/tasks/{by_code.json()['id']}").json()["payload"] == "plain text"
    query_token = api.call(
        "POST", f"/tasks/webhook?code_name=hello&oauth={api.token}", content=b"x", headers={}
    )
    assert query_token.status_code == 200
    assert api.call("POST", "/tasks/webhook?code_name=hello", content=b"x", headers={}).status_code == 401
    assert api.call("POST", "/tasks/webhook?code_name=nope", content=b"x").status_code == 404
    assert api.call("POST", "/tasks/webhook", content=b"x").status_code == 400
    assert api.call("POST", "/tasks/webhook?code_name=hello", content=b"x" * 70000).status_code == 400


def test_pause_resume_cancel_all_and_stats(api: Api, code: dict[str, Any], store: Store) -> None:
    code_id = code["id"]
    assert api.call("POST", f"/codes/{code_id}/pause_task_queue").json() == {"msg": "Paused"}
    assert api.call("POST", f"/codes/{code_id}/pause_task_queue").json() == {"msg": "Already paused"}
    assert api.call("GET", f"/codes/{code_id}").json()["paused"] is True
    api.queue({"code_name": "hello"}, {"code_name": "hello"})
    assert store.claim("r", ["default"], 30) is None
    assert api.call("POST", f"/codes/{code_id}/resume_task_queue").json() == {"msg": "Resumed"}
    assert store.claim("r", ["default"], 30) is not None
    result = api.call("POST", f"/codes/{code_id}/cancel_all").json()
    assert result == {"msg": "Cancelled", "cancelled": 1, "stopping": 1}
    stats = api.call("GET", f"/codes/{code_id}/stats").json()
    assert (
        stats["cancelled"] == 1
        and stats["preparing"] == 1
        and set(stats) >= {"queued", "complete", "timeout"}
    )
    assert api.call("GET", f"/codes/{code_id}/stats?start_date=10&end_date=5").status_code == 400


def test_runners_and_unserved_clusters(api: Api, code: dict[str, Any], store: Store) -> None:
    task_id = api.queue({"code_name": "hello", "cluster": "gpu"}).json()["tasks"][0]["id"]
    assert api.call("GET", f"/tasks/{task_id}").json()["msg"] == "waiting: no runner serves cluster 'gpu'"
    store.register_runner("r1", "host-a", ["gpu", "default"], 4, "0.1.0")
    assert api.call("GET", f"/tasks/{task_id}").json()["msg"] is None
    # Runners are infrastructure shared by every project: an admin token lists them, a project's not.
    refused = api.client.get("/2/runners", headers={"Authorization": f"OAuth {api.token}"})
    assert refused.status_code == 403 and refused.json() == {"msg": "This endpoint needs an admin token"}
    admin, _ = store.create_token(None, "admin")
    runners = api.client.get("/2/runners", headers={"Authorization": f"OAuth {admin}"}).json()["runners"]
    assert [(r["id"], r["host"], r["clusters"], r["slots"], r["alive"]) for r in runners] == [
        ("r1", "host-a", ["gpu", "default"], 4, True)
    ]
    store.unregister_runner("r1")
    runners = api.client.get("/2/runners", headers={"Authorization": f"OAuth {admin}"}).json()["runners"]
    assert runners[0]["alive"] is False and runners[0]["stopped_at"] is not None


def test_task_retry_overrides_are_validated(api: Api, code: dict[str, Any]) -> None:
    assert api.queue({"code_name": "hello", "retries": 11}).status_code == 400
    task = api.queue({"code_name": "hello", "retries": 2, "retries_delay": 10}).json()["tasks"][0]
    assert task["status"] == "queued"
