"""``dockworker projects|token`` on the service's host, through the store (both dialects). The
same commands through the API with an admin token: tests/acceptance/test_admin.py."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from dockworker.cli.main import app
from dockworker.errors import ClientError, NotFound
from dockworker.store import Store


def run(store_url: str, tmp_path: Path, *args: str) -> Result:
    return CliRunner().invoke(app, [*args, "--data-dir", str(tmp_path / "data"), "--store", store_url])


def ok_json(store_url: str, tmp_path: Path, *args: str) -> Any:
    result = run(store_url, tmp_path, *args, "--json")
    assert result.exit_code == 0, (result.output, result.exception)
    return json.loads(result.stdout)


def test_projects_and_tokens_through_the_store(store_url: str, tmp_path: Path, store: Store) -> None:
    created = ok_json(store_url, tmp_path, "projects", "create", "alpha", "--token")
    project, first = created["id"], created["token"]
    assert first["project_id"] == project and first["admin"] is False
    found = store.authenticate(first["token"])
    assert found is not None and found.project_id == project
    assert [p["name"] for p in ok_json(store_url, tmp_path, "projects", "list")] == ["alpha"]

    expiring = ok_json(
        store_url, tmp_path, "token", "create", "--project", project, "--name", "ci", "--expires", "30d"
    )
    assert expiring["name"] == "ci" and expiring["expires_at"] is not None
    stored = store.get_token(expiring["id"])
    assert stored.expires_at is not None and abs(stored.expires_at - (time.time() + 30 * 86400)) < 60

    plain = run(store_url, tmp_path, "token", "create")  # the first project, the secret alone
    assert plain.exit_code == 0, plain.output
    by_default = store.authenticate(plain.stdout.strip())
    assert by_default is not None and by_default.project_id == project

    admin = ok_json(store_url, tmp_path, "token", "create", "--admin", "--name", "ops")
    assert admin["admin"] is True and admin["project_id"] is None
    found_admin = store.authenticate(admin["token"])
    assert found_admin is not None and found_admin.is_admin

    listed = ok_json(store_url, tmp_path, "token", "list")
    assert [(t["name"], t["admin"]) for t in listed] == [
        ("ops", True),
        ("first token", False),
        ("ci", False),
        ("cli", False),
    ]
    assert all("token" not in t for t in listed)
    for secret in (first["token"], expiring["token"], admin["token"]):
        assert secret not in json.dumps(listed)
    assert [t["name"] for t in ok_json(store_url, tmp_path, "token", "list", "--admin")] == ["ops"]
    table = run(store_url, tmp_path, "token", "list", "--project", project)
    assert table.exit_code == 0 and "first token" in table.stdout and "ops" not in table.stdout

    revoked = run(store_url, tmp_path, "token", "revoke", expiring["id"])
    assert revoked.exit_code == 0 and f"Revoked token {expiring['id']}" in revoked.stdout
    assert store.authenticate(expiring["token"]) is None
    statuses = {t["name"]: t["active"] for t in ok_json(store_url, tmp_path, "token", "list")}
    assert statuses == {"ops": True, "first token": True, "ci": False, "cli": True}


@pytest.mark.parametrize(
    ("args", "error", "message"),
    [
        (("projects", "create", "a/b"), ClientError, "without slashes"),
        (("token", "create", "--admin", "--project", "x"), ClientError, "drop --project"),
        (("token", "create", "--expires", "0"), ClientError, "--expires"),
        (("token", "create", "--expires", "soon"), ClientError, "duration"),
        (("token", "create", "--project", "000000000000000000000000"), NotFound, "Project not found"),
        (("token", "revoke", "000000000000000000000000"), NotFound, "Token not found"),
    ],
)
def test_bad_admin_commands(
    store_url: str, tmp_path: Path, store: Store, args: tuple[str, ...], error: type, message: str
) -> None:
    result = run(store_url, tmp_path, *args)
    assert isinstance(result.exception, error), (result.output, result.exception)
    assert message in str(result.exception)
    assert store.list_projects() == [] and store.list_tokens(None) == []


def test_token_create_needs_a_project(store_url: str, tmp_path: Path, store: Store) -> None:
    result = run(store_url, tmp_path, "token", "create")
    assert isinstance(result.exception, ClientError) and "no project yet" in str(result.exception)
