"""Fixtures of the integration tier."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from dockworker.api import create_app
from dockworker.settings import Settings
from dockworker.store import Store
from tests.helpers import Upload


class Api:
    def __init__(self, client: TestClient, project_id: str, token: str) -> None:
        self.client = client
        self.project_id = project_id
        self.token = token
        self.base = f"/2/projects/{project_id}"

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        headers = kwargs.pop("headers", {"Authorization": f"OAuth {self.token}"})
        return self.client.request(method, self.base + path, headers=headers, **kwargs)

    def upload(self, data: dict[str, Any] | str, archive: bytes | None = None) -> Any:
        files: Upload = {"data": (None, data if isinstance(data, str) else json.dumps(data))}
        if archive is not None:
            files["file"] = ("code.zip", archive, "application/zip")
        return self.call("POST", "/codes", files=files)

    def queue(self, *tasks: dict[str, Any]) -> Any:
        return self.call("POST", "/tasks", json={"tasks": list(tasks)})


@pytest.fixture
def api(settings: Settings, store: Store) -> Iterator[Api]:
    wakes: list[int] = []
    app = create_app(settings, store, on_enqueue=lambda: wakes.append(1))
    project = store.create_project("p")
    token, _ = store.create_token(project.id, "t")
    with TestClient(app) as client:
        yield Api(client, project.id, token)
