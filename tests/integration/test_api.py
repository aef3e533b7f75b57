"""The HTTP API through Starlette's test client, on a real SQLite store (no runner)."""

from __future__ import annotations

import io
import json
import time
import zipfile
from typing import Any

import pytest

from dockworker.models import TaskOutcome
from dockworker.settings import Settings
from dockworker.states import TaskStatus
from dockworker.store import Store
from tests.helpers import make_zip
from tests.integration.conftest import Api


def _hello(api: Api, name: str = "hello") -> dict[str, Any]:
    response = api.upload(
        {"name": name, "stack": "busybox", "command": "sh hello.sh"}, make_zip({"hello.sh": "echo hi"})
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_auth_header_query_and_refusals(api: Api, store: Store) -> None:
    assert api.call("GET", "").status_code == 200
    assert api.call("GET", "", headers={}).status_code == 401
    assert api.call("GET", "", headers={}).json() == {
        "msg": "Missing token: send 'Authorization: OAuth <token>' or '?oauth=<token>'"
    }
    assert api.call("GET", "", headers={"Authorization": "OAuth wrong"}).status_code == 401
    assert api.call("GET", f"?oauth={api.token}", headers={}).status_code == 200
    other = store.create_project("other")
    response = api.client.get(f"/2/projects/{other.id}", headers={"Authorization": f"OAuth {api.token}"})
    assert response.status_code == 404 and response.json() == {"msg": "Project not found"}


def test_upload_revisions_download_delete(api: Api) -> None:
    first = _hello(api)
    assert first["msg"] == "Upload successful." and first["rev"] == 1
    second = _hello(api)
    assert second["id"] == first["id"] and second["rev"] == 2
    listed = api.call("GET", "/codes").json()["codes"]
    assert [c["name"] for c in listed] == ["hello"]
    revisions = api.call("GET", f"/codes/{first['id']}/revisions").json()["revisions"]
    assert [r["rev"] for r in revisions] == [2, 1]
    download = api.call("GET", f"/codes/{first['id']}/download?revision=1")
    assert download.headers["content-type"] == "application/zip"
    assert download.headers["content-disposition"] == "filename=hello_1.zip"
    assert zipfile.ZipFile(io.BytesIO(download.content)).read("hello.sh") == b"echo hi"
    assert api.call("DELETE", f"/codes/{first['id']}").json() == {"msg": "Deleted"}
    assert api.call("GET", f"/codes/{first['id']}").status_code == 404


def test_legacy_runtime_upload_and_python_client_quirk(api: Api) -> None:
    archive = make_zip({"hello.py": "print('hi')"})
    # iron_worker_python sends the zip as the text of a Python bytes literal
    quirky = repr(archive).encode()
    body = (
        b'--B\r\nContent-Disposition: form-data; name="data"\r\n\r\n'
        + json.dumps({"name": "py", "runtime": "python", "file_name": "hello.py"}).encode()
        + b'\r\n--B\r\nContent-Disposition: form-data; name="file"; filename="py.zip"\r\n'
        + b"Content-Type: application/zip\r\n\r\n"
        + quirky
        + b"\r\n--B--\r\n"
    )
    response = api.call(
        "POST",
        "/codes",
        content=body,
        headers={"Authorization": f"OAuth {api.token}", "Content-Type": "multipart/form-data; boundary=B"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["runtime"] == "python" and response.json()["code_size"] == len(archive)


@pytest.mark.parametrize(
    ("data", "archive", "message"),
    [
        ("{not json", None, "'data' is not valid JSON"),
        ("[1, 2]", None, "'data' must be a JSON object"),
        ({"stack": "busybox", "command": "x"}, None, "data.name: Field required"),
        ({"name": "x", "command": "x"}, None, "give one of 'stack', 'image' or 'runtime'"),
        ({"name": "x", "stack": "cobol", "command": "x"}, None, "unknown stack 'cobol'"),
        ({"name": "x", "image": "a", "stack": "busybox"}, None, "not both"),
        ({"name": "x", "stack": "busybox"}, None, "'stack' needs 'command'"),
        ({"name": "x", "runtime": "python"}, None, "needs 'file_name'"),
        ({"name": "x", "stack": "busybox", "command": "x", "retries": 11}, None, "data.retries"),
        ({"name": "x", "stack": "busybox", "command": "x", "retries": "3"}, None, "data.retries"),
        ({"name": "x", "stack": "busybox", "command": "x", "bogus": 1}, None, "data.bogus: unknown field"),
        ({"name": "../x", "stack": "busybox", "command": "x"}, None, "data.name"),
        ({"name": "x", "stack": "busybox", "command": "x", "env_vars": {"TASK_ID": "1"}}, None, "TASK_ID"),
        (
            {"name": "x", "stack": "busybox", "command": "x", "secret_env_vars": {"PROGRESS_FILE": "/x"}},
            None,
            "PROGRESS_FILE is set by dockworker",
        ),
        ({"name": "x", "stack": "busybox", "command": "x"}, b"not a zip", "not a valid zip"),
        ({"name": "x", "stack": "busybox", "command": "x"}, make_zip({"../evil": "x"}), "escapes"),
        (
            {"name": "x", "runtime": "python", "file_name": "a.py"},
            make_zip({"b.py": "x"}),
            "not in the uploaded zip",
        ),
        ({"name": "x", "image": "UPPER/case", "command": "x"}, None, "data.image"),
        ({"name": "x", "stack": "busybox", "command": "x", "memory_mb": 999999}, None, "memory_mb"),
    ],
)
def test_bad_uploads_are_refused_and_store_nothing(
    api: Api, data: Any, archive: bytes | None, message: str
) -> None:
    response = api.upload(data, archive)
    assert response.status_code == 400, response.text
    assert message in response.json()["msg"]
    assert api.call("GET", "/codes").json() == {"codes": []}


def test_malformed_multipart(api: Api) -> None:
    response = api.call(
        "POST",
        "/codes",
        content=b"--B\r\ngarbage",
        headers={"Authorization": f"OAuth {api.token}", "Content-Type": "multipart/form-data; boundary=B"},
    )
    assert response.status_code == 400 and "msg" in response.json()


def test_queue_get_list_and_filters(api: Api, store: Store) -> None:
    _hello(api)
    response = api.queue(
        {"code_name": "hello", "payload": '{"a": 1}', "label": "L"}, {"code_name": "hello", "priority": 2}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["msg"] == "Queued up" and len(body["tasks"]) == 2
    first, second = (t["id"] for t in body["tasks"])
    task = api.call("GET", f"/tasks/{first}").json()
    for key in (
        "id",
        "project_id",
        "code_id",
        "code_name",
        "code_rev",
        "status",
        "msg",
        "priority",
        "timeout",
        "delay",
        "label",
        "cluster",
        "created_at",
        "updated_at",
        "start_time",
        "end_time",
        "duration",
        "percent",
        "exit_code",
        "retry_count",
        "original_task_id",
    ):
        assert key in task, key
    assert task["status"] == "queued" and task["payload"] == '{"a": 1}' and task["label"] == "L"
    assert task["timeout"] == 60 and task["cluster"] == "default" and task["created_at"].endswith("Z")
    claimed = store.claim("r", ["default"], 30)
    assert claimed is not None and claimed.id == second
    store.finish(second, "r", TaskOutcome(status=TaskStatus.ERROR, msg="exit code 1", exit_code=1))

    def ids(query: str) -> list[str]:
        return [t["id"] for t in api.call("GET", f"/tasks?{query}").json()["tasks"]]

    assert ids("error=1") == [second]
    assert sorted(ids("queued=1&error=1")) == sorted([first, second])
    assert ids("complete=1") == []
    assert ids("code_name=nope") == []
    assert ids("per_page=1&page=1") == [first]
    assert ids("from_time=9999999999") == []


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"tasks": []}, "tasks"),
        ({"tasks": [{"payload": "x"}]}, "tasks.0.code_name: Field required"),
        ({"tasks": [{"code_name": "hello", "priority": 3}]}, "tasks.0.priority"),
        ({"tasks": [{"code_name": "hello", "priority": "2"}]}, "tasks.0.priority"),
        ({"tasks": [{"code_name": "hello", "delay": -1}]}, "tasks.0.delay"),
        ({"tasks": [{"code_name": "hello", "delay": 604801}]}, "delay may be at most 604800"),
        ({"tasks": [{"code_name": "hello", "timeout": 10**9}]}, "exceeds the maximum"),
        ({"tasks": [{"code_name": "hello", "payload": {"not": "a string"}}]}, "tasks.0.payload"),
        ({"tasks": [{"code_name": "hello", "payload": "x" * 70000}]}, "larger than 65536 bytes"),
        ({"tasks": [{"code_name": "hello", "surprise": True}]}, "unknown field"),
        ({"tasks": [{"code_name": "missing"}]}, "code package 'missing' not found"),
    ],
)
def test_bad_tasks_are_refused(api: Api, body: dict[str, Any], message: str) -> None:
    _hello(api)
    response = api.call("POST", "/tasks", json=body)
    assert 400 <= response.status_code < 500, response.text
    assert message in response.json()["msg"]
    assert api.call("GET", "/tasks").json() == {"tasks": []}


def test_invalid_json_and_oversized_body(api: Api, settings: Settings) -> None:
    response = api.call(
        "POST",
        "/tasks",
        content=b"{oops",
        headers={"Authorization": f"OAuth {api.token}", "Content-Type": "application/json"},
    )
    assert response.status_code == 400 and response.json() == {"msg": "Invalid JSON in request body"}
    huge = b"x" * (settings.max_request_bytes + 1)
    response = api.call(
        "POST",
        "/tasks",
        content=huge,
        headers={"Authorization": f"OAuth {api.token}", "Content-Type": "application/json"},
    )
    assert response.status_code == 413 and "too large" in response.json()["msg"]


def test_paging_limits(api: Api) -> None:
    response = api.call("GET", "/tasks?per_page=101")
    assert response.status_code == 400 and response.json() == {"msg": "per_page may be at most 100"}
    assert api.call("GET", "/tasks?page=-1").status_code == 400


def test_log_cancel_progress_retry(api: Api, store: Store) -> None:
    _hello(api)
    task_id = api.queue({"code_name": "hello"}).json()["tasks"][0]["id"]
    assert api.call("GET", f"/tasks/{task_id}/log").status_code == 404
    store.claim("r", ["default"], 30)
    store.mark_running(task_id, "r", 1.0)
    store.append_log(task_id, b"line 1\n")
    log = api.call("GET", f"/tasks/{task_id}/log")
    assert (
        log.status_code == 200
        and log.text == "line 1\n"
        and log.headers["content-type"].startswith("text/plain")
    )
    progress = api.call("POST", f"/tasks/{task_id}/progress", json={"percent": 40, "msg": "working"})
    assert progress.json() == {"msg": "Progress set"}
    assert api.call("POST", f"/tasks/{task_id}/progress", json={"percent": 101}).status_code == 400
    task = api.call("GET", f"/tasks/{task_id}").json()
    assert task["percent"] == 40 and task["msg"] == "working"
    assert api.call("POST", f"/tasks/{task_id}/retry").status_code == 409
    store.finish(task_id, "r", TaskOutcome(status=TaskStatus.ERROR, msg="exit code 2", exit_code=2))
    assert api.call("POST", f"/tasks/{task_id}/cancel").status_code == 409
    retried = api.call("POST", f"/tasks/{task_id}/retry", json={"delay": 5}).json()["tasks"][0]
    assert retried["original_task_id"] == task_id and retried["retry_count"] == 1 and retried["delay"] == 5
    assert api.call("GET", f"/tasks/{task_id}").json()["retry_task_id"] == retried["id"]
    cancelled = api.call("POST", f"/tasks/{retried['id']}/cancel").json()
    assert cancelled == {"msg": "Cancelled", "status": "cancelled"}
    events = api.call("GET", f"/tasks/{task_id}/events").json()["events"]
    assert [e["kind"] for e in events] == ["queued", "claimed", "started", "error", "retried"]


def test_followed_log_ends_with_the_task(api: Api, store: Store) -> None:
    _hello(api)
    task_id = api.queue({"code_name": "hello"}).json()["tasks"][0]["id"]
    store.claim("r", ["default"], 30)
    store.mark_running(task_id, "r", time.time())
    store.append_log(task_id, b"a\n")
    store.finish(task_id, "r", TaskOutcome(status=TaskStatus.COMPLETE, msg="", exit_code=0))
    with api.client.stream(
        "GET", f"{api.base}/tasks/{task_id}/log?follow=true", headers={"Authorization": f"OAuth {api.token}"}
    ) as response:
        assert response.read() == b"a\n"


def test_unknown_ids_and_routes(api: Api) -> None:
    assert api.call("GET", "/tasks/000000000000000000000000").json() == {"msg": "Task not found"}
    assert api.call("GET", "/codes/nope").status_code == 404
    assert api.call("GET", "/nowhere").json() == {"msg": "Not Found"}
    assert api.call("PUT", "/tasks").status_code == 405


def test_stacks_openapi_and_docs(api: Api) -> None:
    stacks = api.client.get("/2/stacks", headers={"Authorization": f"OAuth {api.token}"}).json()
    assert {"busybox", "python"} <= set(stacks)
    spec = api.client.get("/openapi.json").json()
    assert "/2/projects/{project_id}/tasks" in spec["paths"]
    assert "/2/projects/{project_id}/codes" in spec["paths"]
    docs = api.client.get("/docs")
    assert docs.status_code == 200 and "/static/swagger/swagger-ui-bundle.js" in docs.text
    assert "cdn" not in docs.text
    script = api.client.get("/static/swagger/swagger-ui-bundle.js")
    assert script.status_code == 200 and len(script.content) > 100_000


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "message"),
    [
        ("POST", "/tasks", {"json": {"tasks": [{"code_name": "hello", "payload": "a\x00b"}]}}, "NUL"),
        ("POST", "/tasks", {"json": {"tasks": [{"code_name": "hello", "label": "a\x00b"}]}}, "NUL"),
        ("POST", "/tasks", {"json": {"tasks": [{"code_name": "hello\x00"}]}}, "NUL"),
        ("POST", "/tasks/webhook?code_name=hello", {"content": b"a\x00b"}, "NUL"),
        ("GET", "/tasks?code_name=a%00b", {}, "NUL characters are not allowed in the URL"),
        ("GET", "/tasks/a%00b", {}, "NUL characters are not allowed in the URL"),
        ("GET", "/codes/a%00b/download", {}, "NUL characters are not allowed in the URL"),
        ("POST", "/schedules/a%00b/cancel", {}, "NUL characters are not allowed in the URL"),
        ("POST", "/schedules", {"json": {"schedules": [{"code_name": "hello", "payload": "\x00"}]}}, "NUL"),
    ],
)
def test_nul_characters_are_refused_on_every_dialect(
    api: Api, method: str, path: str, kwargs: dict[str, Any], message: str
) -> None:
    """PostgreSQL cannot store NUL in text; SQLite can. Either way: a 4xx, and nothing stored."""
    _hello(api)
    response = api.call(method, path, **kwargs)
    assert 400 <= response.status_code < 500, response.text
    assert message in response.json()["msg"]
    assert api.call("GET", "/tasks").json() == {"tasks": []}
    assert api.call("GET", "/schedules").json() == {"schedules": []}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"env_vars": {"A": "x\x00y"}}, "data.env_vars: Value error, contains a NUL character"),
        ({"secret_env_vars": {"A": "x\x00y"}}, "data.secret_env_vars: Value error, contains a NUL"),
        ({"config": "{\x00}"}, "data.config: Value error, contains a NUL character"),
        ({"env_vars": {"A\n": "x"}}, "not a valid environment variable name"),
        ({"command": "sh\x00 x"}, "data.command: Value error, contains a NUL character"),
        ({"image": "busybox\n", "stack": None}, "data.image"),
    ],
)
def test_values_a_container_cannot_take_are_refused_at_upload(
    api: Api, data: dict[str, Any], message: str
) -> None:
    upload = {"name": "x", "stack": "busybox", "command": "true", **data}
    response = api.upload({k: v for k, v in upload.items() if v is not None})
    assert response.status_code == 400, response.text
    assert message in response.json()["msg"]
    assert api.call("GET", "/codes").json() == {"codes": []}


def test_a_task_says_what_it_used_and_the_openapi_document_says_so(api: Api, store: Store) -> None:
    _hello(api)
    measured, unknown = (
        t["id"] for t in api.queue({"code_name": "hello"}, {"code_name": "hello"}).json()["tasks"]
    )
    queued = api.call("GET", f"/tasks/{measured}").json()
    assert queued["cpu_time_ms"] is None and queued["peak_memory_bytes"] is None
    for task_id, outcome in (
        (
            measured,
            TaskOutcome(status=TaskStatus.COMPLETE, msg="", cpu_time_ms=1234, peak_memory_bytes=157286400),
        ),
        (unknown, TaskOutcome(status=TaskStatus.COMPLETE, msg="")),
    ):
        store.claim("r", ["default"], 30)
        store.mark_running(task_id, "r", 1.0)
        store.finish(task_id, "r", outcome)
    task = api.call("GET", f"/tasks/{measured}").json()
    assert (task["cpu_time_ms"], task["peak_memory_bytes"]) == (1234, 157286400)
    listed = {t["id"]: t for t in api.call("GET", "/tasks").json()["tasks"]}
    assert (listed[measured]["cpu_time_ms"], listed[unknown]["cpu_time_ms"]) == (1234, None)
    assert listed[unknown]["peak_memory_bytes"] is None
    schemas = api.client.get("/openapi.json").json()["components"]["schemas"]
    documented = schemas["TaskBody"]["properties"]
    assert set(documented) == set(task), "the documented task and the answered one differ"
    for field in ("cpu_time_ms", "peak_memory_bytes"):
        assert documented[field]["anyOf"] == [{"type": "integer"}, {"type": "null"}]
        assert "cgroup accounting" in documented[field]["description"]
    paths = api.client.get("/openapi.json").json()["paths"]
    answer = paths["/2/projects/{project_id}/tasks/{task_id}"]["get"]["responses"]["200"]
    assert answer["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/TaskBody"}
