"""The HUD through Starlette's test client on a real store (every dialect): sessions, CSRF,
tenancy, headers, and each page's content and forms. The browser tier (tests/browser) drives
the same pages in Chromium, scripts included."""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from fastapi.testclient import TestClient

from dockworker.api import create_app
from dockworker.api.hud.session import SESSION_COOKIE, Signer
from dockworker.api.hud.web import CSP
from dockworker.models import CodeSpec, TaskOutcome
from dockworker.settings import Settings
from dockworker.states import TaskStatus
from dockworker.store import Store
from tests.helpers import make_zip, queue

ARCHIVE = make_zip({"run.sh": "echo hi"})


@dataclass
class Setup:
    client: TestClient
    store: Store
    project_id: str
    token: str
    admin_token: str
    code_id: str

    @property
    def base(self) -> str:
        return f"/hud/projects/{self.project_id}"


def login(client: TestClient, token: str) -> str:
    """Log in through the form; returns where it led."""
    form = client.get("/hud/")
    nonce = re.search(r'name="nonce" value="([^"]+)"', form.text)
    assert nonce is not None, form.text
    answer = client.post("/hud/login", data={"token": token, "nonce": nonce[1]}, follow_redirects=False)
    assert answer.status_code == 303, answer.text
    return str(answer.headers["location"])


def use_session(client: TestClient, value: str) -> None:
    client.cookies.clear()
    client.cookies.set(SESSION_COOKIE, value)


def csrf_of(client: TestClient, page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', client.get(page).text)
    assert found is not None, f"no CSRF field on {page}"
    return found[1]


@pytest.fixture
def hud(settings: Settings, store: Store) -> Iterator[Setup]:
    project = store.create_project("demo")
    token, _ = store.create_token(project.id, "dev")
    admin_token, _ = store.create_token(None, "ops")
    code = store.save_code(
        project.id,
        CodeSpec(name="hello", stack="busybox", command="sh run.sh", config='{"a": 1}'),
        ARCHIVE,
        hashlib.sha256(ARCHIVE).hexdigest(),
    )
    with TestClient(create_app(settings, store)) as client:
        yield Setup(client, store, project.id, token, admin_token, code.id)


def test_login_with_a_good_token_sets_a_signed_strict_cookie_and_a_bad_one_sets_nothing(hud: Setup) -> None:
    client = hud.client
    form = client.get("/hud/")
    assert form.status_code == 200 and 'name="token"' in form.text and 'method="post"' in form.text
    nonce = re.search(r'name="nonce" value="([^"]+)"', form.text)
    assert nonce is not None
    bad = client.post("/hud/login", data={"token": "wrong", "nonce": nonce[1]}, follow_redirects=False)
    assert bad.status_code == 401 and "Invalid, expired or revoked token." in bad.text
    assert "set-cookie" not in bad.headers and SESSION_COOKIE not in client.cookies
    good = client.post("/hud/login", data={"token": hud.token, "nonce": nonce[1]}, follow_redirects=False)
    assert good.status_code == 303 and good.headers["location"] == hud.base
    cookies = good.headers.get_list("set-cookie")
    session = next(c for c in cookies if c.startswith(f"{SESSION_COOKIE}="))
    assert "HttpOnly" in session and "SameSite=strict" in session and "Path=/hud" in session
    assert hud.token not in session
    assert client.get(hud.base).status_code == 200
    assert client.get("/hud/", follow_redirects=False).headers["location"] == hud.base


def test_the_token_is_never_taken_from_a_url(hud: Setup) -> None:
    assert hud.client.get(f"/hud/login?token={hud.token}").status_code == 404  # only POST logs in
    assert SESSION_COOKIE not in hud.client.cookies
    assert (
        hud.client.get(f"{hud.base}?oauth={hud.token}", follow_redirects=False).headers["location"] == "/hud/"
    )
    assert "oauth" not in login(hud.client, hud.token)


def test_a_login_form_without_its_cookie_is_refused(hud: Setup) -> None:
    refused = hud.client.post("/hud/login", data={"token": hud.token, "nonce": "forged"})
    assert refused.status_code == 403 and SESSION_COOKIE not in hud.client.cookies


def test_pages_need_a_session(hud: Setup) -> None:
    for page in (hud.base, f"{hud.base}/codes", "/hud/runners", f"{hud.base}/tasks/x/stream"):
        answer = hud.client.get(page, follow_redirects=False)
        assert answer.status_code == 303 and answer.headers["location"] == "/hud/", page


def test_logout_ends_the_session_even_for_a_copy_of_the_cookie(hud: Setup) -> None:
    login(hud.client, hud.token)
    copied = hud.client.cookies[SESSION_COOKIE]
    out = hud.client.post("/hud/logout", data={"csrf": csrf_of(hud.client, hud.base)}, follow_redirects=False)
    assert out.status_code == 303 and out.headers["location"] == "/hud/"
    assert SESSION_COOKIE not in hud.client.cookies
    use_session(hud.client, copied)
    replay = hud.client.get(hud.base, follow_redirects=False)
    assert replay.status_code == 303 and replay.headers["location"] == "/hud/"


def test_revoked_tokens_expired_and_altered_sessions_lead_to_the_login_form(hud: Setup) -> None:
    login(hud.client, hud.token)
    genuine = hud.client.cookies[SESSION_COOKIE]
    signer = Signer(hud.store.hud_secret())
    token_id = signer.unsign("session", genuine)["tid"]  # type: ignore[index]
    expired = signer.sign("session", {"sid": "s", "tid": token_id, "exp": time.time() - 1})
    altered = genuine[:-2] + ("AA" if not genuine.endswith("AA") else "BB")
    forged = Signer("not the secret").sign("session", {"sid": "s", "tid": token_id, "exp": time.time() + 99})
    for value in (expired, altered, forged):
        use_session(hud.client, value)
        answer = hud.client.get(hud.base, follow_redirects=False)
        assert answer.headers["location"] == "/hud/"
    use_session(hud.client, genuine)
    assert hud.client.get(hud.base).status_code == 200
    hud.store.revoke_token(token_id)
    assert hud.client.get(hud.base, follow_redirects=False).headers["location"] == "/hud/"


def test_forms_refuse_a_missing_or_foreign_csrf_token(hud: Setup, settings: Settings) -> None:
    pause = f"{hud.base}/codes/{hud.code_id}/pause"
    with TestClient(create_app(settings, hud.store)) as other:
        login(other, hud.token)
        foreign = csrf_of(other, hud.base)
    login(hud.client, hud.token)
    for data in ({}, {"csrf": foreign}, {"csrf": "x"}):
        refused = hud.client.post(pause, data=data)
        assert refused.status_code == 403 and "security token" in refused.text
    assert not hud.store.get_code(hud.project_id, hud.code_id).paused
    done = hud.client.post(pause, data={"csrf": csrf_of(hud.client, hud.base)}, follow_redirects=False)
    assert done.status_code == 303 and hud.store.get_code(hud.project_id, hud.code_id).paused


def test_another_projects_objects_answer_404_as_the_api_does(hud: Setup) -> None:
    task = queue(hud.store, hud.project_id, "hello")
    other = hud.store.create_project("other")
    other_token, _ = hud.store.create_token(other.id, "theirs")
    api = hud.client.get(
        f"/2/projects/{hud.project_id}/tasks/{task.id}", headers={"Authorization": f"OAuth {other_token}"}
    )
    assert api.status_code == 404
    login(hud.client, other_token)
    csrf = csrf_of(hud.client, f"/hud/projects/{other.id}")
    pages = ["", "/codes", f"/codes/{hud.code_id}", f"/codes/{hud.code_id}/tasks", f"/tasks/{task.id}"]
    pages += [f"/tasks/{task.id}/stream", f"/tasks/{task.id}/log", "/schedules", "/analytics", "/usage"]
    for page in pages:
        answer = hud.client.get(hud.base + page)
        assert answer.status_code == 404 and api.json()["msg"] in answer.text, page
    for action in (f"/tasks/{task.id}/cancel", f"/codes/{hud.code_id}/pause", f"/codes/{hud.code_id}/delete"):
        assert hud.client.post(hud.base + action, data={"csrf": csrf}).status_code == 404, action
    assert hud.store.get_task(hud.project_id, task.id).status is TaskStatus.QUEUED
    # Its own project, another project's ids: 404 as well, with the API's message.
    mine = hud.client.get(f"/hud/projects/{other.id}/tasks/{task.id}")
    assert mine.status_code == 404 and "Task not found" in mine.text


def test_an_admin_token_sees_every_project_and_the_runners(hud: Setup) -> None:
    hud.store.register_runner("runner-a", "host-a", ["default", "gpu"], 4, "0.1.0")
    hud.store.runner_heartbeat("runner-a", 3)
    assert login(hud.client, hud.admin_token) == "/hud/projects"
    projects = hud.client.get("/hud/projects")
    assert f'href="/hud/projects/{hud.project_id}"' in projects.text
    runners = hud.client.get("/hud/runners").text
    assert "runner-a" in runners and "host-a" in runners and "default, gpu" in runners
    assert "3 / 4" in runners and "state-alive" in runners
    assert hud.client.get(hud.base).status_code == 200


def test_a_project_token_may_not_see_the_runners(hud: Setup) -> None:
    login(hud.client, hud.token)
    assert hud.client.get("/hud/runners").status_code == 403
    assert hud.client.get("/hud/projects", follow_redirects=False).headers["location"] == hud.base


def test_every_page_carries_a_strict_policy_and_no_inline_script_or_style(hud: Setup) -> None:
    task = queue(hud.store, hud.project_id, "hello")
    login(hud.client, hud.admin_token)
    pages = [
        "",
        "/codes",
        f"/codes/{hud.code_id}",
        f"/codes/{hud.code_id}/tasks",
        f"/codes/{hud.code_id}/queue",
    ]
    pages += [f"/tasks/{task.id}", "/schedules", "/schedules/new", "/analytics?by=hour&group=code", "/usage"]
    for url in [*(hud.base + p for p in pages), "/hud/runners", "/hud/projects", "/hud/nothing-here"]:
        answer = hud.client.get(url)
        assert answer.headers["content-security-policy"] == CSP, url
        assert answer.headers["x-frame-options"] == "DENY" and answer.headers["cache-control"] == "no-store"
        html = answer.text
        assert not re.search(r"<script(?![^>]*\bsrc=)", html), url
        assert not re.search(r"\s(style|on[a-z]+)=", html), url
        external = [
            u for u in re.findall(r'(?:src|href|action)="([^"]*)"', html) if not u.startswith(("/", "#", "?"))
        ]
        assert external == [], url  # everything from this server
    assert "script-src 'self'" in CSP and "unsafe" not in CSP
    static = hud.client.get("/hud/static/hud.js")
    assert static.status_code == 200 and static.headers["x-content-type-options"] == "nosniff"


def test_project_page_counts_per_package(hud: Setup) -> None:
    for _ in range(3):
        queue(hud.store, hud.project_id, "hello")
    done = queue(hud.store, hud.project_id, "hello", cluster="other")
    claimed = hud.store.claim("r", ["other"], 30)
    assert claimed is not None and claimed.id == done.id
    hud.store.mark_running(done.id, "r", time.time())
    hud.store.finish(done.id, "r", TaskOutcome(status=TaskStatus.ERROR, msg="exit code 1", exit_code=1))
    login(hud.client, hud.token)
    html = hud.client.get(hud.base).text
    tasks = f"{hud.base}/codes/{hud.code_id}/tasks"
    assert f'href="{tasks}?status=queued">3</a>' in html
    assert f'href="{tasks}?status=error">1</a>' in html
    assert html.count('<span class="zero">0</span>') == 5


def test_task_list_filters_and_pages(hud: Setup) -> None:
    ids = [queue(hud.store, hud.project_id, "hello", label=f"n{i}").id for i in range(35)]
    hud.store.request_cancel(hud.project_id, ids[0])
    login(hud.client, hud.token)
    tasks = f"{hud.base}/codes/{hud.code_id}/tasks"
    first = hud.client.get(tasks).text
    assert first.count("status status-") == 30 and ids[-1] in first and ids[0] not in first
    assert 'href="?page=1"' in first
    second = hud.client.get(f"{tasks}?page=1").text
    assert second.count("status status-") == 5 and ids[0] in second
    cancelled = hud.client.get(f"{tasks}?status=cancelled").text
    assert cancelled.count("status status-cancelled") == 1 and ids[0] in cancelled
    assert hud.client.get(f"{tasks}?status=bogus").status_code == 400
    assert "Concurrency: <b>0</b> / unlimited" in first


def test_queue_form_queues_with_the_apis_checks(hud: Setup) -> None:
    login(hud.client, hud.token)
    page = f"{hud.base}/codes/{hud.code_id}/queue"
    csrf = csrf_of(hud.client, page)
    fields = {"csrf": csrf, "payload": '{"n": 1}', "priority": "2", "delay": "0", "timeout": "120"}
    done = hud.client.post(
        page, data={**fields, "cluster": "gpu", "label": "from-hud"}, follow_redirects=False
    )
    assert done.status_code == 303
    task_id = done.headers["location"].rsplit("/", 1)[1]
    task = hud.store.get_task(hud.project_id, task_id)
    assert (task.payload, task.priority, task.timeout, task.cluster, task.label) == (
        '{"n": 1}',
        2,
        120,
        "gpu",
        "from-hud",
    )
    too_long = hud.client.post(page, data={**fields, "delay": str(30 * 86400)})
    assert (
        too_long.status_code == 400
        and "delay may be at most" in too_long.text
        and "{&#34;n&#34;: 1}" in too_long.text
    )
    not_a_number = hud.client.post(page, data={**fields, "timeout": "soon"})
    assert not_a_number.status_code == 400 and "is not a whole number" in not_a_number.text


def test_task_page_shows_fields_masked_payload_events_chain_and_log(hud: Setup) -> None:
    task = queue(hud.store, hud.project_id, "hello", payload='{"password": "hunter2", "n": 7}')
    claimed = hud.store.claim("r", ["default"], 30)
    assert claimed is not None
    hud.store.mark_running(task.id, "r", time.time())
    hud.store.append_log(task.id, "line one\nünïcode\n".encode())
    hud.store.set_progress(hud.project_id, task.id, 40, "working")
    hud.store.finish(task.id, "r", TaskOutcome(status=TaskStatus.ERROR, msg="exit code 3", exit_code=3))
    retry = hud.store.retry(hud.project_id, task.id, 0)
    login(hud.client, hud.token)
    html = hud.client.get(f"{hud.base}/tasks/{task.id}").text
    assert "hunter2" not in html and "[FILTERED]" in html and "&#34;n&#34;: 7" in html
    assert "line one\nünïcode" in html and 'value="40"' in html and "exit code 3" in html
    for kind in ("queued", "claimed", "started", "error", "retried"):
        assert f"<td>{kind}</td>" in html
    assert retry.id in html and "not recorded" in html
    assert "Retry task" in html and 'data-when="active" hidden' in html
    assert 'data-stream="' not in html  # an ended task has no live stream
    live = hud.client.get(f"{hud.base}/tasks/{retry.id}").text
    assert f'data-stream="{hud.base}/tasks/{retry.id}/stream?offset=0"' in live
    raw = hud.client.get(f"{hud.base}/tasks/{task.id}/log")
    assert raw.text == "line one\nünïcode\n"


def test_the_task_page_shows_what_the_task_used(hud: Setup) -> None:
    measured, running, never_ran = (queue(hud.store, hud.project_id, "hello") for _ in range(3))
    for task in (measured, running):
        assert hud.store.claim("r", ["default"], 30) is not None
        hud.store.mark_running(task.id, "r", time.time())
    used = TaskOutcome(status=TaskStatus.COMPLETE, msg="", cpu_time_ms=1234, peak_memory_bytes=157 * 2**20)
    hud.store.finish(measured.id, "r", used)
    hud.store.request_cancel(hud.project_id, never_ran.id)
    login(hud.client, hud.token)

    def card(task_id: str) -> dict[str, str]:
        html = hud.client.get(f"{hud.base}/tasks/{task_id}").text
        found = re.findall(r'<dt>([^<]+)</dt><dd data-field="(cpu_time|peak_memory)">([^<]*)</dd>', html)
        return {label: text for label, _, text in found}

    assert card(measured.id) == {"CPU time": "1.2 s", "Peak memory": "157.0 MiB"}
    html = hud.client.get(f"{hud.base}/tasks/{measured.id}").text
    assert '<th>cpu_time_ms</th><td data-field="cpu_time_ms">1234</td>' in html
    assert f'<th>peak_memory_bytes</th><td data-field="peak_memory_bytes">{157 * 2**20}</td>' in html
    assert set(card(running.id).values()) == {"measured when the task ends"}
    assert set(card(never_ran.id).values()) == {"no container ran"}


def test_cancel_and_retry_from_the_task_page(hud: Setup) -> None:
    task = queue(hud.store, hud.project_id, "hello")
    login(hud.client, hud.token)
    page = f"{hud.base}/tasks/{task.id}"
    csrf = csrf_of(hud.client, page)
    cancelled = hud.client.post(f"{page}/cancel", data={"csrf": csrf})
    assert cancelled.status_code == 200 and "Cancelled" in cancelled.text
    assert hud.store.get_task(hud.project_id, task.id).status is TaskStatus.CANCELLED
    again = hud.client.post(f"{page}/cancel", data={"csrf": csrf})
    assert "Task already finished (cancelled)" in again.text
    retried = hud.client.post(f"{page}/retry", data={"csrf": csrf}, follow_redirects=False)
    new_id = retried.headers["location"].rsplit("/", 1)[1]
    assert hud.store.get_task(hud.project_id, new_id).original_task_id == task.id


def _events(lines: Iterator[str]) -> Iterator[tuple[str, str]]:
    kind = ""
    for line in lines:
        if line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: "):
            yield kind, line[6:]


def test_the_stream_sends_the_log_and_status_as_they_change_and_ends_with_the_task(hud: Setup) -> None:
    task = queue(hud.store, hud.project_id, "hello")
    claimed = hud.store.claim("r", ["default"], 30)
    assert claimed is not None
    hud.store.mark_running(task.id, "r", time.time())
    hud.store.append_log(task.id, b"first\n")
    login(hud.client, hud.token)
    seen: list[tuple[str, str]] = []
    finished = threading.Event()

    def runner_side() -> None:
        # Waits for the stream to have sent the first line: the rest happens while it is open.
        assert any_event.wait(30)
        hud.store.append_log(task.id, "second é\n".encode())
        assert hud.store.report_progress(task.id, "r", 60, "most of it")  # as the worker's channel
        assert progress_seen.wait(30)
        ended = TaskOutcome(
            status=TaskStatus.COMPLETE, msg="", exit_code=0, cpu_time_ms=40, peak_memory_bytes=4 * 2**20
        )
        hud.store.finish(task.id, "r", ended)
        finished.set()

    any_event = threading.Event()
    progress_seen = threading.Event()
    thread = threading.Thread(target=runner_side)
    thread.start()
    with hud.client.stream("GET", f"{hud.base}/tasks/{task.id}/stream?offset=0") as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        for event in _events(stream.iter_lines()):
            seen.append(event)
            if event[0] == "log":
                any_event.set()
            if event[0] == "task" and json.loads(event[1])["percent"] == 60:
                progress_seen.set()
    thread.join(30)
    assert finished.is_set()
    kinds = [kind for kind, _ in seen]
    assert kinds[-1] == "end" and '"complete"' in seen[-1][1]
    logs = "".join(json.loads(data) for kind, data in seen if kind == "log")
    assert logs == "first\nsecond é\n"
    states = [json.loads(data) for kind, data in seen if kind == "task"]
    assert states[0]["status"] == "running" and states[-1]["status"] == "complete"
    # what the task used arrives with its end, raw for the fields table and as the card shows it
    assert (states[0]["cpu_time_ms"], states[0]["cpu_time"]) == (None, "measured when the task ends")
    assert (states[-1]["cpu_time_ms"], states[-1]["peak_memory_bytes"]) == (40, 4 * 2**20)
    assert (states[-1]["cpu_time"], states[-1]["peak_memory"]) == ("40 ms", "4.0 MiB")
    assert states[0]["percent"] is None
    live = [(t["status"], t["percent"], t["msg"]) for t in states]
    assert ("running", 60, "most of it") in live
    assert live[-1] == ("complete", 60, "most of it")


def test_a_reconnecting_stream_resumes_after_the_last_event(hud: Setup) -> None:
    task = queue(hud.store, hud.project_id, "hello")
    hud.store.request_cancel(hud.project_id, task.id)
    hud.store.append_log(task.id, b"0123456789")
    login(hud.client, hud.token)
    answer = hud.client.get(f"{hud.base}/tasks/{task.id}/stream?offset=0", headers={"Last-Event-ID": "4"})
    logs = [data for kind, data in _events(iter(answer.text.splitlines())) if kind == "log"]
    assert logs == ['"456789"']


def test_code_page_config_edit_webhook_download_and_delete(hud: Setup) -> None:
    login(hud.client, hud.token)
    page = f"{hud.base}/codes/{hud.code_id}"
    html = hud.client.get(page).text
    webhook = f"http://testserver/2/projects/{hud.project_id}/codes/{hud.code_id}/webhook"
    assert f'data-secret="{webhook}"' in html and "••••" in html and "{&#34;a&#34;: 1}" in html
    csrf = csrf_of(hud.client, page)
    saved = hud.client.post(f"{page}/config", data={"csrf": csrf, "config": '{"a": 2}'})
    assert "Config saved as revision 2." in saved.text
    code = hud.store.get_code(hud.project_id, hud.code_id)
    assert code.rev == 2 and code.latest_revision.spec.config == '{"a": 2}'
    api = hud.client.get(
        f"/2/projects/{hud.project_id}/codes/{hud.code_id}", headers={"Authorization": f"OAuth {hud.token}"}
    )
    assert api.json()["config"] == '{"a": 2}'
    download = hud.client.get(f"{page}/download?revision=2")
    assert download.content == ARCHIVE and download.headers["content-type"] == "application/zip"
    too_big = hud.client.post(f"{page}/config", data={"csrf": csrf, "config": "x" * (64 * 1024 + 1)})
    assert "larger than" in too_big.text and hud.store.get_code(hud.project_id, hud.code_id).rev == 2
    deleted = hud.client.post(f"{page}/delete", data={"csrf": csrf})
    assert "Deleted code package hello" in deleted.text
    assert hud.client.get(page).status_code == 404


def test_a_secret_config_is_never_shown(hud: Setup) -> None:
    code = hud.store.save_code(
        hud.project_id,
        CodeSpec(name="quiet", stack="busybox", command="true", config="s3cr3t", config_secret=True),
        None,
        None,
    )
    login(hud.client, hud.token)
    assert "s3cr3t" not in hud.client.get(f"{hud.base}/codes/{code.id}").text


def test_schedule_form_previews_creates_and_cancels(hud: Setup) -> None:
    login(hud.client, hud.token)
    base = f"{hud.base}/schedules"
    preview = hud.client.get(
        f"{base}/preview",
        params={"kind": "cron", "cron": "30 9 * * *", "timezone": "Asia/Tokyo", "code_name": "hello"},
    )
    body = preview.json()
    assert body["description"].endswith("(Asia/Tokyo)") and len(body["next_runs"]) == 5
    assert all(run["utc"].endswith("T00:30:00.000Z") for run in body["next_runs"])
    assert all(run["local"].endswith("09:30:00 Asia/Tokyo") for run in body["next_runs"])
    bad = hud.client.get(
        f"{base}/preview", params={"kind": "cron", "cron": "every day", "code_name": "hello"}
    ).json()
    assert "invalid cron expression" in bad["error"]
    csrf = csrf_of(hud.client, f"{base}/new")
    fields = {
        "csrf": csrf,
        "code_name": "hello",
        "kind": "every",
        "run_every": "3600",
        "run_times": "3",
        "start_at": "2030-01-01T00:00",
    }
    shown = hud.client.post(base, data={**fields, "action": "preview"})
    assert "2030-01-01T00:00:00.000Z" in shown.text and "2030-01-01T02:00:00.000Z" in shown.text
    assert hud.store.list_schedules(hud.project_id, 0, 10) == []
    created = hud.client.post(base, data=fields)
    assert "Scheduled" in created.text and "every 1 hour" in created.text
    (schedule,) = hud.store.list_schedules(hud.project_id, 0, 10)
    assert (schedule.run_every, schedule.run_times, schedule.start_at) == (3600, 3, 1893456000.0)
    unknown = hud.client.post(base, data={**fields, "code_name": "nope"})
    assert unknown.status_code == 404 and "code package &#39;nope&#39; not found" in unknown.text
    too_often = hud.client.post(base, data={**fields, "run_every": "5"})
    assert too_often.status_code == 400 and "at least 60 seconds" in too_often.text
    cancelled = hud.client.post(f"{base}/{schedule.id}/cancel", data={"csrf": csrf})
    assert f"Cancelled schedule {schedule.id}." in cancelled.text
    assert schedule.id in hud.client.get(f"{base}?show=cancelled").text
    assert schedule.id not in hud.client.get(base).text


def test_analytics_and_usage_pages(hud: Setup) -> None:
    task = queue(hud.store, hud.project_id, "hello", priority=1)
    claimed = hud.store.claim("r", ["default"], 30)
    assert claimed is not None
    hud.store.mark_running(task.id, "r", time.time() - 90)
    ended = TaskOutcome(
        status=TaskStatus.TIMEOUT, msg="timeout", cpu_time_ms=45_200, peak_memory_bytes=300 * 2**20
    )
    hud.store.finish(task.id, "r", ended)
    login(hud.client, hud.token)
    analytics = hud.client.get(f"{hud.base}/analytics").text
    # tasks, duration and CPU time: for all tasks and for the one cluster
    assert analytics.count("<svg") == 6 and 'class="bar-failed"' in analytics and "100.0 %" in analytics
    assert analytics.count('class="bar-cpu"') == 2 and '<td class="num">45.2 s</td></tr>' in analytics
    hourly = hud.client.get(f"{hud.base}/analytics?by=hour&group=code").text
    assert ">hello</a>" in hourly and '<path class="bar-tasks" d="M' in hourly  # 720 bars: one path
    assert ": 1 tasks</title>" in analytics  # 30 bars: each with its tooltip
    assert "recomputed at most once a minute" in analytics
    usage = hud.client.get(f"{hud.base}/usage").text
    month = time.strftime("%Y-%m", time.gmtime())
    assert (
        f"<td>{month}</td>" in usage
        and '<td class="num">0</td><td class="num">90</td><td class="num">0</td>' in usage
    )
    # CPU seconds and the largest peak, on the month's total and on its cluster's row
    assert usage.count('<td class="num">45.2</td><td class="num">300.0 MiB</td></tr>') == 2
    assert "<title>Usage · dockworker HUD</title>" in usage
    assert "<title>Analytics · dockworker HUD</title>" in analytics
