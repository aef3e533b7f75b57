"""Fixtures of the browser tier: a real ``dockworker up`` (API, runner, Docker) per module and
Debian's Chromium driven by Playwright, headless. Each test gets a fresh browser context (no
cookies); a console error or a Content-Security-Policy violation fails the test.

Screenshots go to ``build/screenshots`` (or ``$DOCKWORKER_SCREENSHOTS``)."""

from __future__ import annotations

import http.client
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.acceptance.support import LOOPBACK, STOP_TIMEOUT_S, Service

WAIT_MS = 30_000  # the longest any expectation waits for the page
SCREENSHOTS = Path(
    os.environ.get("DOCKWORKER_SCREENSHOTS", Path(__file__).parents[2] / "build" / "screenshots")
)


@dataclass
class Hud:
    service: Service
    admin_token: str

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.service.port}"

    @property
    def project_id(self) -> str:
        return str(self.service.iron()["project_id"])

    @property
    def token(self) -> str:
        return str(self.service.iron()["token"])

    def admin(self, method: str, path: str, body: Any = None) -> Any:
        conn = http.client.HTTPConnection(LOOPBACK, self.service.port, timeout=15)
        try:
            headers = {"Authorization": f"OAuth {self.admin_token}", "Content-Type": "application/json"}
            conn.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
            response = conn.getresponse()
            answer = json.loads(response.read())
            assert response.status == 200, answer
            return answer
        finally:
            conn.close()


def _admin_token(service: Service) -> str:
    found = re.search(r"ADMIN TOKEN.*?\n\n    (\S+)\n", service.log_tail(100_000), re.S)
    assert found is not None, "dockworker up printed no admin token on its first start"
    return found[1]


@pytest.fixture(scope="module")
def hud(engine: object, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hud]:
    svc = Service(tmp_path_factory.mktemp("hud") / "data")
    svc.start()
    try:
        yield Hud(svc, _admin_token(svc))
    finally:
        try:
            code = svc.stop(STOP_TIMEOUT_S)
        finally:
            svc.kill()
        assert code == 0, f"dockworker up exited with {code}:\n{svc.log_tail()}"


@pytest.fixture
def page(browser: Any, hud: Hud) -> Iterator[Any]:
    context = browser.new_context(base_url=hud.url, viewport={"width": 1280, "height": 900})
    context.set_default_timeout(WAIT_MS)
    tab = context.new_page()
    problems: list[str] = []
    # Pages answering 401/403/404 on purpose log "Failed to load resource"; anything else fails.
    expected = re.compile(r"Failed to load resource: the server responded with a status of 40[134]")
    tab.on(
        "console",
        lambda message: (
            problems.append(message.text)
            if message.type == "error" and not expected.search(message.text)
            else None
        ),
    )
    tab.on("pageerror", lambda error: problems.append(str(error)))
    yield tab
    context.close()
    assert problems == [], f"console errors (a CSP violation?): {problems}"


def screenshot(page: Any, name: str, full_page: bool = True) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    return path


def log_in(page: Any, token: str) -> None:
    page.goto("/hud/")
    page.fill("#token", token)
    page.click("button:has-text('Log in')")
    page.wait_for_url(re.compile(r".*/hud/projects.*"))
