"""The HUD in Chromium against a real ``dockworker up``: login, every page, the live log and
status, cancel, queue from the form, pause/resume, cancel all, config, schedules, and another
project's token. Screenshots of the main pages are saved (see conftest.py)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.acceptance.support import queue_task, upload_script

from .conftest import Hud, log_in, screenshot

pytestmark = [pytest.mark.docker, pytest.mark.slow]

TICKER = 'i=0; while true; do i=$((i+1)); echo "tick $i"; sleep 0.2; done\n'
LINES = 'for i in 1 2 3 4 5; do echo "line $i"; sleep 0.2; done\n'
Packages = dict[str, str]


def _code_id(hud: Hud, name: str) -> str:
    codes = hud.admin("GET", f"/2/projects/{hud.project_id}/codes")["codes"]
    return str(next(c["id"] for c in codes if c["name"] == name))


def _task(hud: Hud, task_id: str) -> dict[str, Any]:
    found: dict[str, Any] = hud.admin("GET", f"/2/projects/{hud.project_id}/tasks/{task_id}")
    return found


@pytest.fixture(scope="module")
def packages(hud: Hud, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The module's code packages, by name: their ids."""
    work = tmp_path_factory.mktemp("code")
    upload_script(hud.service, work / "ticker", "ticker", TICKER)
    upload_script(
        hud.service, work / "lines", "lines", 'for i in 1 2 3 4 5; do echo "line $i"; sleep 0.2; done\n'
    )
    upload_script(hud.service, work / "idle", "idle", "true\n")
    return {name: _code_id(hud, name) for name in ("ticker", "lines", "idle")}


def test_a_wrong_token_shows_an_error_and_sets_no_cookie(page: Any, hud: Hud) -> None:
    page.goto("/hud/")
    page.fill("#token", "not-a-token")
    page.click("button:has-text('Log in')")
    page.wait_for_selector("#login-error")
    assert "Invalid, expired or revoked token." in page.inner_text("#login-error")
    assert [c["name"] for c in page.context.cookies()] == ["dockworker_hud_login"]
    assert "not-a-token" not in page.url
    screenshot(page, "login-error")


def test_log_in_and_out(page: Any, hud: Hud) -> None:
    log_in(page, hud.token)
    assert page.url.endswith(f"/hud/projects/{hud.project_id}") and hud.token not in page.url
    (session,) = [c for c in page.context.cookies() if c["name"] == "dockworker_hud"]
    assert session["httpOnly"] and session["sameSite"] == "Strict" and session["path"] == "/hud"
    assert hud.token not in session["value"]
    assert page.evaluate("document.cookie") == ""  # HttpOnly: no script can read it
    page.click("button:has-text('Log out')")
    page.wait_for_selector("text=Logged out.")
    page.goto(f"/hud/projects/{hud.project_id}")
    assert page.url.endswith("/hud/") and page.is_visible("#token")


def test_queue_from_the_form_then_the_live_log_and_cancel(
    page: Any, hud: Hud, packages: dict[str, str]
) -> None:
    log_in(page, hud.token)
    page.goto(f"/hud/projects/{hud.project_id}/codes/{packages['ticker']}/tasks")
    page.click("a:has-text('Queue task')")
    page.fill("#payload", '{"user": "ann", "password": "hunter2"}')
    page.wait_for_selector("#payload-check:has-text('valid JSON')")
    page.fill("#label", "from-the-browser")
    page.select_option("#priority", "1")
    page.click("#queue-form button[type=submit]")
    page.wait_for_url(re.compile(r".*/tasks/[0-9a-f]{24}$"))
    task_id = page.url.rsplit("/", 1)[1]
    assert f"Queued task {task_id}." in page.inner_text(".flash")
    task = _task(hud, task_id)
    assert (task["label"], task["priority"]) == ("from-the-browser", 1)
    assert "hunter2" not in page.inner_text("#payload") and "[FILTERED]" in page.inner_text("#payload")
    page.evaluate("window.notReloaded = true")
    at_load = page.inner_text("#log")
    seen = max([int(n) for n in re.findall(r"tick (\d+)", at_load)], default=0)
    # Lines that were not there when the page loaded arrive without a reload.
    page.wait_for_selector(f"#log:has-text('tick {seen + 3}')")
    page.wait_for_selector("[data-field=status] .status-running")
    assert page.evaluate("window.notReloaded") is True
    screenshot(page, "task-live")
    screenshot(page, "task-live-top", full_page=False)  # docs/hud-task.png is one of these
    # Cancelled elsewhere (the API): the page shows the end live, still without a reload.
    hud.admin("POST", f"/2/projects/{hud.project_id}/tasks/{task_id}/cancel")
    page.wait_for_selector("[data-field=status] .status-cancelled")
    page.wait_for_selector("#live-state:has-text('the task ended: cancelled')")
    page.wait_for_selector("button:has-text('Retry task')", state="visible")
    assert page.is_hidden("button:has-text('Cancel task')")
    # what the killed container used, measured by the runner, shows up with the end
    assert re.fullmatch(r"\d+ ms|[\d.]+ s", page.inner_text("[data-field=cpu_time]"))
    assert re.fullmatch(r"[\d.]+ [KM]iB", page.inner_text("[data-field=peak_memory]"))
    assert page.evaluate("window.notReloaded") is True


def test_the_cancel_button_asks_then_cancels(page: Any, hud: Hud, packages: Packages) -> None:
    log_in(page, hud.token)
    task_id = queue_task(hud.service, "ticker")
    page.goto(f"/hud/projects/{hud.project_id}/tasks/{task_id}")
    page.wait_for_selector("#log:has-text('tick 2')")
    page.once("dialog", lambda dialog: dialog.dismiss())
    page.click("button:has-text('Cancel task')")
    assert _task(hud, task_id)["status"] == "running"
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("button:has-text('Cancel task')")
    page.wait_for_selector(".flash:has-text('Cancelled')")
    page.wait_for_selector("[data-field=status] .status-cancelled")
    assert _task(hud, task_id)["status"] == "cancelled"
    assert page.is_visible("button:has-text('Retry task')")


def test_an_ended_task_shows_its_whole_log_and_status(page: Any, hud: Hud, packages: dict[str, str]) -> None:
    log_in(page, hud.token)
    task_id = queue_task(hud.service, "lines")
    page.goto(f"/hud/projects/{hud.project_id}/tasks/{task_id}")
    page.wait_for_selector("[data-field=status] .status-complete")
    page.wait_for_selector("#log:has-text('line 5')")
    assert page.inner_text("#log").split() == [
        "line",
        "1",
        "line",
        "2",
        "line",
        "3",
        "line",
        "4",
        "line",
        "5",
    ]
    assert page.is_visible("button:has-text('Retry task')")
    page.click("button:has-text('Retry task')")
    page.wait_for_selector("text=Retrying as task")
    assert page.url.rsplit("/", 1)[1] != task_id
    page.wait_for_selector("[data-field=status] .status-complete")
    assert task_id in page.inner_text("section.grid:has(h2:has-text('Retry chain'))")


def test_pause_resume_and_cancel_all_with_confirmation(page: Any, hud: Hud, packages: Packages) -> None:
    log_in(page, hud.token)
    page.goto(f"/hud/projects/{hud.project_id}/codes/{packages['idle']}/tasks")
    page.click("button:has-text('Pause processing')")
    page.wait_for_selector("#paused")
    assert hud.admin("GET", f"/2/projects/{hud.project_id}/codes/{packages['idle']}")["paused"] is True
    queued = [queue_task(hud.service, "idle") for _ in range(3)]
    page.reload()
    assert page.inner_text("table.tasks").count("queued") == 3
    screenshot(page, "task-list")
    page.once("dialog", lambda dialog: dialog.dismiss())
    page.click("button:has-text('Cancel all tasks for this code')")
    assert all(_task(hud, t)["status"] == "queued" for t in queued)
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("button:has-text('Cancel all tasks for this code')")
    page.wait_for_selector("text=Cancelled 3 queued tasks")
    assert all(_task(hud, t)["status"] == "cancelled" for t in queued)
    page.click("button:has-text('Resume processing')")
    page.wait_for_selector("button:has-text('Pause processing')")
    assert page.query_selector("#paused") is None
    assert hud.admin("GET", f"/2/projects/{hud.project_id}/codes/{packages['idle']}")["paused"] is False


def test_project_code_and_config_pages(page: Any, hud: Hud, packages: Packages) -> None:
    log_in(page, hud.token)
    row = page.locator("table.counts tr", has_text="lines")
    assert row.count() == 1
    screenshot(page, "project")
    page.click("nav.tabs a:has-text('Code')")
    page.click("a:has-text('ticker')")
    assert "••••" in page.inner_text("#webhook")
    page.click("button[data-reveal=webhook]")
    assert page.inner_text("#webhook").endswith(f"/codes/{packages['ticker']}/webhook")
    page.fill("#config", '{"level": "debug"}')
    page.click("button:has-text('Save config')")
    page.wait_for_selector("text=Config saved as revision 2.")
    code = hud.admin("GET", f"/2/projects/{hud.project_id}/codes/{packages['ticker']}")
    assert code["rev"] == 2 and code["config"] == '{"level": "debug"}'
    assert page.locator("#revisions a:has-text('download')").count() == 2
    with page.expect_download() as download:
        page.click("#revisions tr:has-text('2') >> a:has-text('download')")
    assert Path(download.value.path()).read_bytes()[:2] == b"PK"
    screenshot(page, "code")


def test_schedule_with_a_cron_preview_then_cancel(page: Any, hud: Hud, packages: Packages) -> None:
    log_in(page, hud.token)
    page.goto(f"/hud/projects/{hud.project_id}/schedules/new?code_name=idle")
    page.check("input[name=kind][value=cron]")
    assert page.is_hidden("#run_every") and page.is_visible("#cron")
    page.fill("#cron", "0 9 * * mon-fri")
    page.fill("#timezone", "Europe/Paris")
    page.wait_for_selector("#preview-runs li:has-text('09:00:00 Europe/Paris')")
    assert page.locator("#preview-runs li").count() == 5
    assert "(Europe/Paris)" in page.inner_text("#preview-description")
    screenshot(page, "schedule-new")
    page.click("button:has-text('Create schedule')")
    page.wait_for_selector("text=Scheduled")
    (schedule,) = hud.admin("GET", f"/2/projects/{hud.project_id}/schedules")["schedules"]
    assert (schedule["cron"], schedule["timezone"]) == ("0 9 * * mon-fri", "Europe/Paris")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#schedules button:has-text('Cancel')")
    page.wait_for_selector(f"text=Cancelled schedule {schedule['id']}.")
    page.click("nav.subtabs a:has-text('Cancelled')")
    page.wait_for_selector(f"#schedules:has-text('{schedule['id']}')")


def test_analytics_usage_and_runners(page: Any, hud: Hud, packages: Packages) -> None:
    log_in(page, hud.admin_token)
    assert page.url.endswith("/hud/projects")
    page.click(f"a[href='/hud/projects/{hud.project_id}']")
    page.click("nav.tabs a:has-text('Analytics')")
    assert page.locator("figure.chart svg").count() >= 4
    assert page.locator("svg rect.bar-tasks").count() >= 1
    screenshot(page, "analytics")
    page.select_option("#group", "code")
    page.select_option("#by", "hour")
    page.click("button:has-text('Show')")
    page.wait_for_selector("#analytics-totals:has-text('lines')")
    page.click("nav.tabs a:has-text('Usage')")
    assert page.locator("#usage tr.total").count() == 1
    page.click("nav.global a:has-text('Runners')")
    row = page.locator("#runners tbody tr").first
    assert "alive" in row.inner_text() and "/ 2" in row.inner_text()
    screenshot(page, "runners")


def test_another_projects_token_gets_404(page: Any, hud: Hud, packages: Packages) -> None:
    other = hud.admin("POST", "/2/projects", {"name": "elsewhere", "create_token": True})
    task_id = queue_task(hud.service, "idle")
    log_in(page, other["token"]["token"])
    assert page.url.endswith(f"/hud/projects/{other['id']}")
    for path in ("", f"/tasks/{task_id}", f"/codes/{packages['idle']}", "/schedules"):
        answer = page.goto(f"/hud/projects/{hud.project_id}{path}")
        assert answer is not None and answer.status == 404, path
        assert page.inner_text("#error") == "Project not found"
    answer = page.goto(f"/hud/projects/{other['id']}/tasks/{task_id}")
    assert answer is not None and answer.status == 404 and page.inner_text("#error") == "Task not found"
    page.goto(f"/hud/projects/{other['id']}")
    assert page.locator("table.counts tbody td.empty").count() == 1
