"""``GET /2/stacks``: IronWorker's list of names, and the details of each stack on request."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from dockworker.api import create_app
from dockworker.settings import Settings
from dockworker.stacks import STACKS
from dockworker.store import Store


@pytest.fixture
def client(settings: Settings, store: Store) -> Iterator[tuple[TestClient, dict[str, str]]]:
    app = create_app(settings, store, on_enqueue=lambda: None, image_present=lambda image: "python" in image)
    project = store.create_project("p")
    token, _ = store.create_token(project.id, "t")
    with TestClient(app) as test_client:
        yield test_client, {"Authorization": f"OAuth {token}"}


def test_stacks_are_a_list_of_names(client: tuple[TestClient, dict[str, str]]) -> None:
    http, headers = client
    answer = http.get("/2/stacks", headers=headers)
    assert answer.status_code == 200
    assert answer.json() == sorted(STACKS)


def test_stack_details(client: tuple[TestClient, dict[str, str]]) -> None:
    http, headers = client
    details = http.get("/2/stacks", params={"details": 1}, headers=headers).json()
    assert [stack["name"] for stack in details] == sorted(STACKS)
    python = next(stack for stack in details if stack["name"] == "python")
    assert python == {
        "name": "python",
        "version": "3.11",
        "image": "dockworker/stack-python:3.11",
        "description": STACKS["python"].description,
        "runtimes": ["python", "python3"],
        "legacy_command": "python3 {file}",
        "user": "1000:1000",
        "built": True,
    }
    assert {stack["name"]: stack["built"] for stack in details}["go"] is False


def test_stacks_need_a_token(client: tuple[TestClient, dict[str, str]]) -> None:
    http, _ = client
    assert http.get("/2/stacks").status_code == 401
