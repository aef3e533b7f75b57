"""A code archive cannot write outside the code cache, on upload, in the runner, or in run-local,
against the real engine and store."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import zipfile
from pathlib import Path

import pytest

from dockworker.models import CodeSpec
from dockworker.settings import Settings
from dockworker.states import TaskStatus
from dockworker.store import Store
from tests.conftest import StartRunner
from tests.helpers import queue, wait_for
from tests.integration.conftest import Api

pytestmark = pytest.mark.docker


def _escaping_zip() -> bytes:
    def link(archive: zipfile.ZipFile, name: str, target: str) -> None:
        info = zipfile.ZipInfo(name)
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(info, target)

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        link(archive, "e", ".")
        link(archive, "d", "e/..")
        link(archive, "d/g", "..")
        archive.writestr("d/g/PWNED-by-zip.txt", "x")
        archive.writestr("main.sh", "echo should not run")
    return buffer.getvalue()


def _written_outside(data_dir: Path) -> list[Path]:
    return [
        path
        for path in data_dir.parent.rglob("*")
        if path.name in ("PWNED-by-zip.txt", "g") and "code-cache/.extract-" not in str(path)
    ]


def test_the_upload_refuses_a_chain_of_links_that_climbs_out(api: Api) -> None:
    answer = api.upload({"name": "evil", "stack": "busybox", "command": "sh main.sh"}, _escaping_zip())
    assert answer.status_code == 400
    assert "link" in answer.json()["msg"]


def test_an_archive_already_in_the_store_is_checked_again_when_a_task_runs(
    store: Store, settings: Settings, start_runner: StartRunner
) -> None:
    project = store.create_project("p").id
    archive = _escaping_zip()
    # As if it had been stored before the upload check knew better.
    store.save_code(
        project,
        CodeSpec(name="evil", stack="busybox", command="sh main.sh"),
        archive,
        hashlib.sha256(archive).hexdigest(),
    )
    start_runner()
    task = wait_for(store, queue(store, project, "evil").id)
    assert task.status is TaskStatus.ERROR
    assert "cannot unpack the code package" in (task.msg or "")
    assert "link" in (task.msg or "")
    assert _written_outside(settings.data_dir) == []
    cache = settings.code_cache_dir
    assert not cache.exists() or [p for p in os.listdir(cache) if not p.startswith(".")] == []
