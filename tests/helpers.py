"""Test helpers shared by the tiers."""

from __future__ import annotations

import hashlib
import io
import time
import zipfile
from collections.abc import Callable
from typing import TypedDict, Unpack

from dockworker.models import CodeSpec, NewTask, Task
from dockworker.store import Store

# A multipart upload as TestClient takes it: field -> (file name or None, content[, content type]).
Upload = dict[str, tuple[str | None, str | bytes] | tuple[str | None, str | bytes, str]]


def make_zip(files: dict[str, str | bytes], modes: dict[str, int] | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in files.items():
            info = zipfile.ZipInfo(name)
            info.external_attr = ((modes or {}).get(name, 0o644) | 0o100000) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, content)
    return buffer.getvalue()


def save_code(
    store: Store, project_id: str, spec: CodeSpec, files: dict[str, str | bytes] | None = None
) -> None:
    archive = make_zip(files) if files is not None else None
    checksum = hashlib.sha256(archive).hexdigest() if archive is not None else None
    store.save_code(project_id, spec, archive, checksum)


class TaskOptions(TypedDict, total=False):
    """The rest of a :class:`NewTask`, for :func:`queue` (its defaults are the dataclass's)."""

    priority: int | None
    delay: int
    label: str | None
    cluster: str
    retries: int | None
    retries_delay: int | None
    schedule_id: str | None


class QueueOptions(TaskOptions, total=False):
    """What :func:`queue` takes besides the package's name."""

    payload: str
    timeout: int


def queue(
    store: Store,
    project_id: str,
    code_name: str,
    payload: str = "",
    timeout: int = 60,
    **kw: Unpack[TaskOptions],
) -> Task:
    return store.enqueue(
        project_id, [NewTask(code_name=code_name, payload=payload, timeout=timeout, **kw)], 3600
    )[0]


def wait_for(store: Store, task_id: str, statuses: set[str] | None = None, timeout: float = 60) -> Task:
    """Poll until the task reaches one of ``statuses`` (default: any terminal one)."""
    deadline = time.monotonic() + timeout
    while True:
        task = store.load_task(task_id)
        if (statuses is None and task.status.is_terminal) or (statuses and task.status.value in statuses):
            return task
        if time.monotonic() > deadline:
            raise AssertionError(f"task {task_id} still {task.status} after {timeout} s: {task.msg}")
        time.sleep(0.05)


def left_after(listing: Callable[[], list[str]], timeout: float = 10) -> list[str]:
    """What ``listing`` still shows once it is empty or ``timeout`` seconds have passed: a
    runner removes a container just after it reports the task's outcome."""
    deadline = time.monotonic() + timeout
    while (found := listing()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return found
