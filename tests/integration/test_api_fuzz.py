"""Property-based fuzzing of the whole API from its own OpenAPI document (schemathesis): no
input may cause a 5xx, and every answer must match the documented status codes and shapes."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from schemathesis import checks

from dockworker.api import create_app
from dockworker.settings import load_settings
from dockworker.store import open_store
from tests.helpers import Upload, make_zip

# schemathesis reads the schema when the module is collected, so the app is built here, on a
# throw-away SQLite store removed when the module's tests end.
_DATA = Path(tempfile.mkdtemp(prefix="dockworker-fuzz-"))
_SETTINGS = load_settings(env={}, data_dir=_DATA)
_STORE = open_store(_SETTINGS.database_url)
_STORE.migrate()
_PROJECT = _STORE.create_project("fuzz").id
_TOKEN, _ = _STORE.create_token(_PROJECT, "fuzz")
_ADMIN_TOKEN, _ = _STORE.create_token(None, "fuzz-admin")
APP = create_app(_SETTINGS, _STORE)
AUTH = {"Authorization": f"OAuth {_TOKEN}"}
ADMIN_AUTH = {"Authorization": f"OAuth {_ADMIN_TOKEN}"}

schema = schemathesis.openapi.from_asgi("/openapi.json", APP)

# What the issue asks of the API: no 5xx, documented status codes and content types, bodies
# matching their schemas. (Checks that a schema-valid request is accepted do not apply: the
# schema cannot express "the code package must exist".)
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
]


@pytest.fixture(scope="module", autouse=True)
def _store_with_a_package() -> Iterator[None]:
    with TestClient(APP) as client:
        data = '{"name": "hello", "stack": "busybox", "command": "sh hello.sh"}'
        files: Upload = {
            "data": (None, data),
            "file": ("c.zip", make_zip({"hello.sh": "echo"}), "application/zip"),
        }
        assert client.post(f"/2/projects/{_PROJECT}/codes", files=files, headers=AUTH).status_code == 200
    yield
    _STORE.close()
    shutil.rmtree(_DATA, ignore_errors=True)


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_error_and_answers_match_the_schema(case: Any) -> None:
    if "project_id" in (case.path_parameters or {}):
        case.path_parameters["project_id"] = _PROJECT
    case.call_and_validate(headers=AUTH, checks=CHECKS)


@schema.include(tag=["admin", "runners"]).parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_admin_endpoints_with_an_admin_token(case: Any) -> None:
    """The project token above only ever gets 403/404 from these: fuzz them as an admin too."""
    if "project_id" in (case.path_parameters or {}):
        case.path_parameters["project_id"] = _PROJECT
    case.call_and_validate(headers=ADMIN_AUTH, checks=CHECKS)
