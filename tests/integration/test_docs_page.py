"""``/docs`` as a person sees it: rendered by Chromium, every file served by the app itself."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dockworker.api import create_app
from dockworker.settings import Settings
from dockworker.store import Store
from tests.integration.live_server import serving


@pytest.mark.dialects("sqlite")
def test_the_docs_page_renders_the_operations(
    settings: Settings, store: Store, tmp_path: Path, browser: Any
) -> None:
    with serving(create_app(settings, store)) as port:
        context = browser.new_context()
        try:
            page = context.new_page()
            hosts: set[str] = set()
            page.on("request", lambda request: hosts.add(request.url.split("/")[2]))
            page.goto(f"http://127.0.0.1:{port}/docs")
            rendered = page.locator(".opblock-summary-description")
            rendered.or_(page.get_by_text("Unable to render")).first.wait_for(timeout=30_000)
            summaries = rendered.all_inner_texts()
            text = page.inner_text("body")
            page.screenshot(path=str(tmp_path / "docs.png"))
        finally:
            context.close()
    assert "Unable to render" not in text
    assert {"Queue Tasks", "Upload Code", "Task Log", "Health"} <= set(summaries), summaries
    assert "OAS 3.1" in text
    assert hosts == {f"127.0.0.1:{port}"}, "the page loads everything from the app (no CDN)"
