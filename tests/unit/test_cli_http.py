"""The CLI's HTTP client: which proxy it goes through."""

from __future__ import annotations

import pytest

from dockworker.cli.http import _proxy_for


def test_the_proxy_of_the_environment_unless_no_proxy_names_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    assert _proxy_for("http", "dockworker.example") is None
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.example:3128")
    assert _proxy_for("http", "dockworker.example") == ("proxy.example", 3128)
    assert _proxy_for("https", "dockworker.example") is None
    monkeypatch.setenv("NO_PROXY", "dockworker.example,127.0.0.1")
    assert _proxy_for("http", "dockworker.example") is None
    assert _proxy_for("http", "other.example") == ("proxy.example", 3128)
