"""The runner's progress report, on every dialect: written under the lease only, kept at the end,
cleared for a new attempt."""

from __future__ import annotations

import time

import pytest

from dockworker.errors import ClientError
from dockworker.models import MAX_PROGRESS_MSG, CodeSpec, Task, TaskOutcome
from dockworker.states import TaskStatus
from dockworker.store import Store
from tests.helpers import queue, save_code

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def project(store: Store) -> str:
    project = store.create_project("p").id
    save_code(store, project, CodeSpec(name="c", stack="busybox", command="true"))
    return project


def running(store: Store, project: str, runner_id: str = "r1") -> Task:
    task = queue(store, project, "c")
    claimed = store.claim(runner_id, ["default"], 30)
    assert claimed is not None and claimed.id == task.id
    assert store.mark_running(task.id, runner_id, time.time())
    return store.load_task(task.id)


def test_progress_is_written_under_the_lease_and_a_field_left_out_is_kept(store: Store, project: str) -> None:
    task = running(store, project)
    assert store.report_progress(task.id, "r1", 20, "downloading")
    assert store.report_progress(task.id, "r1", 40, None)
    assert store.report_progress(task.id, "r1", None, "unpacking \u00e9\u6f22\U0001f600")
    now = store.load_task(task.id)
    assert (now.percent, now.msg) == (40, "unpacking \u00e9\u6f22\U0001f600")
    assert now.updated_at >= task.updated_at


def test_a_report_without_the_lease_writes_nothing_and_records_no_event(store: Store, project: str) -> None:
    task = running(store, project)
    events = len(store.list_events(task.id))
    assert not store.report_progress(task.id, "intruder", 99, "forged")
    assert store.release(task.id, "r1", "engine away")  # the lease is gone
    assert not store.report_progress(task.id, "r1", 98, "late")
    assert not store.report_progress("no-such-task", "r1", 1, None)
    now = store.load_task(task.id)
    assert now.percent is None and now.msg is not None and now.msg.startswith("waiting: ")
    assert len(store.list_events(task.id)) == events + 1  # the release's own


def test_no_report_after_the_end_and_a_complete_task_keeps_the_last_msg(store: Store, project: str) -> None:
    task = running(store, project)
    assert store.report_progress(task.id, "r1", 100, "result: 42")
    assert store.finish(task.id, "r1", TaskOutcome(status=TaskStatus.COMPLETE, msg="", exit_code=0))
    assert not store.report_progress(task.id, "r1", 5, "after the end")
    done = store.load_task(task.id)
    assert (done.status, done.percent, done.msg) == (TaskStatus.COMPLETE, 100, "result: 42")


def test_an_error_outcome_replaces_the_msg_and_keeps_the_percent(store: Store, project: str) -> None:
    task = running(store, project)
    assert store.report_progress(task.id, "r1", 70, "working")
    assert store.finish(task.id, "r1", TaskOutcome(status=TaskStatus.ERROR, msg="exit code 1", exit_code=1))
    done = store.load_task(task.id)
    assert (done.percent, done.msg) == (70, "exit code 1")


def test_a_new_attempt_starts_without_progress(store: Store, project: str) -> None:
    task = running(store, project)
    assert store.report_progress(task.id, "r1", 80, "first attempt")
    store.requeue_after_infra_failure(task.id, "r1", "engine error", budget=5, delay=0)
    queued = store.load_task(task.id)
    assert queued.status is TaskStatus.QUEUED and queued.percent == 80
    assert store.claim("r2", ["default"], 30) is not None
    assert store.mark_running(task.id, "r2", time.time())
    again = store.load_task(task.id)
    assert (again.percent, again.msg) == (None, None)


@pytest.mark.parametrize(
    ("percent", "msg", "error"),
    [
        (101, None, "percent 101 is not within 0-100"),
        (-1, None, "percent -1 is not within 0-100"),
        (None, "x" * (MAX_PROGRESS_MSG + 1), f"longer than {MAX_PROGRESS_MSG}"),
        (None, "nul \x00 inside", "contains a NUL character"),
    ],
)
def test_values_out_of_bounds_are_refused(
    store: Store, project: str, percent: int | None, msg: str | None, error: str
) -> None:
    task = running(store, project)
    with pytest.raises(ClientError, match=error):
        store.report_progress(task.id, "r1", percent, msg)
    assert store.load_task(task.id).percent is None


def test_the_longest_msg_is_stored_whole(store: Store, project: str) -> None:
    task = running(store, project)
    msg = "\u00e9" * MAX_PROGRESS_MSG
    assert store.report_progress(task.id, "r1", 0, msg)
    assert store.load_task(task.id).msg == msg
