"""TaskExecution on the in-memory engine and a real SQLite store: every outcome, and the
engine failing at each step of a run."""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dockworker.engine import ContainerSpec, ResourceUsage
from dockworker.errors import EngineUnavailable, TaskSetupError
from dockworker.runner.execution import TaskExecution
from dockworker.states import TaskStatus
from tests.fake_engine import Harness, Script


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(tmp_path)
    harness.code()
    yield harness
    harness.close()


def test_exit_zero_completes_keeps_the_log_and_leaves_nothing(h: Harness) -> None:
    h.engine.program(Script(output=[b"hello\n", b"world\n"]))
    task = h.claimed()
    h.execute(task)
    done = h.store.load_task(task.id)
    assert done.status is TaskStatus.COMPLETE and done.exit_code == 0
    assert done.attempts == 1
    assert h.store.read_log(task.id) == b"hello\nworld\n"
    assert h.engine.containers == {}
    assert not (h.settings.task_dirs / task.id).exists()
    assert h.kinds(task.id)[-3:] == ["container_created", "started", "complete"]


def test_the_container_gets_the_contract(h: Harness) -> None:
    task = h.claimed(payload='{"n": 1}')
    h.engine.program(Script(release=threading.Event()))
    execution = threading.Thread(target=h.execute, args=(task,))
    execution.start()
    h.engine.wait_until(lambda: any(c.started_at for c in h.engine.containers.values()))
    container = h.engine.only()
    assert container.spec.env["TASK_ID"] == task.id
    assert container.spec.labels["dockworker.task"] == task.id
    assert container.spec.labels["dockworker.runner"] == h.context.runner_id
    payload = h.settings.task_dirs / task.id / "payload.json"
    assert payload.read_text() == '{"n": 1}'
    h.engine.kill_from_outside(container.id, exit_code=0)
    execution.join(10)
    assert h.store.load_task(task.id).status is TaskStatus.COMPLETE


@pytest.mark.parametrize(
    ("script", "status", "msg"),
    [
        (Script(output=[b"bye\n"], exit_code=3), TaskStatus.ERROR, "exit code 3: bye"),
        (Script(exit_code=127), TaskStatus.ERROR, "exit code 127 (command not found)"),
        (
            Script(exit_code=126, error="boom"),
            TaskStatus.ERROR,
            "exit code 126 (command not executable): boom",
        ),
        (
            Script(output=[b"eating\n"], exit_code=137, oom_killed=True),
            TaskStatus.ERROR,
            "out of memory: the task exceeded its 64 MB memory limit and was killed",
        ),
        (
            Script(exit_code=143),
            TaskStatus.KILLED,
            "killed by signal 15 from outside the task (an operator or the host)",
        ),
    ],
)
def test_exits_are_classified(h: Harness, script: Script, status: TaskStatus, msg: str) -> None:
    h.engine.program(script)
    task = h.claimed()
    h.execute(task)
    done = h.store.load_task(task.id)
    assert (done.status, done.msg, done.exit_code) == (status, msg, script.exit_code)
    assert h.engine.containers == {}


def test_killed_from_outside_while_running(h: Harness) -> None:
    h.engine.program(Script(output=[b"up\n"], release=threading.Event()))
    task = h.claimed()
    runner = threading.Thread(target=h.execute, args=(task,))
    runner.start()
    h.engine.wait_until(lambda: h.store.load_task(task.id).status is TaskStatus.RUNNING)
    h.engine.kill_from_outside(h.engine.only().id)
    runner.join(10)
    done = h.store.load_task(task.id)
    assert done.status is TaskStatus.KILLED and done.exit_code == 137


def test_the_deadline_kills_the_container(h: Harness) -> None:
    h.engine.program(Script(output=[b"slow\n"], release=threading.Event()))
    task = h.claimed(timeout=1)
    h.execute(task)
    done = h.store.load_task(task.id)
    assert done.status is TaskStatus.TIMEOUT and done.msg == "timed out after 1 s"
    assert h.engine.removed and h.engine.containers == {}
    assert "kill" in h.engine.calls


def test_cancel_kills_and_ends_cancelled(h: Harness) -> None:
    h.engine.program(Script(release=threading.Event()))
    task = h.claimed()
    execution_done = threading.Event()
    execution = TaskExecution(task, h.context)

    def run_then_say_so() -> None:
        execution.run()
        execution_done.set()

    thread = threading.Thread(target=run_then_say_so)
    thread.start()
    h.engine.wait_until(lambda: h.store.load_task(task.id).status is TaskStatus.RUNNING)
    execution.cancel()
    assert execution_done.wait(10)
    done = h.store.load_task(task.id)
    assert done.status is TaskStatus.CANCELLED and done.msg == "cancelled by user"
    assert h.engine.containers == {}


def test_interrupt_hands_the_task_back_on_the_infrastructure_budget(h: Harness) -> None:
    h.engine.program(Script(release=threading.Event()))
    task = h.claimed()
    execution = TaskExecution(task, h.context)
    thread = threading.Thread(target=execution.run)
    thread.start()
    h.engine.wait_until(lambda: h.store.load_task(task.id).status is TaskStatus.RUNNING)
    execution.interrupt("the runner shut down before the task finished")
    thread.join(10)
    done = h.store.load_task(task.id)
    assert done.status is TaskStatus.QUEUED and "shut down" in (done.msg or "")
    assert done.infra_attempts == 1 and done.attempts == 1
    assert h.engine.containers == {}


def test_a_missing_image_is_a_setup_error_with_the_build_hint(h: Harness) -> None:
    h.engine.images.clear()
    task = h.claimed()
    h.execute(task)
    done = h.store.load_task(task.id)
    assert done.status is TaskStatus.ERROR and done.infra_attempts == 0
    assert "image not found" in (done.msg or "") and "dockworker stacks build busybox" in (done.msg or "")


# --- the engine failing at each step ------------------------------------------------------------


@pytest.mark.parametrize("step", ["create", "attach", "start", "read", "wait"])
def test_an_engine_error_at_each_step_is_retried_and_leaves_no_container(h: Harness, step: str) -> None:
    h.engine.program(Script(output=[b"partial\n"]))
    h.engine.fail(step)
    task = h.claimed()
    h.execute(task)
    done = h.store.load_task(task.id)
    assert done.status is TaskStatus.QUEUED, done.msg
    assert done.infra_attempts == 1 and done.retry_count == 0
    assert (done.msg or "").startswith("retrying after infrastructure error:")
    assert "injected" in (done.msg or "")
    assert h.engine.containers == {}
    assert h.kinds(task.id)[-1] == "infra_retry"


@pytest.mark.parametrize("step", ["create", "attach", "start"])
def test_an_unreachable_engine_releases_the_task_without_spending_its_budget(h: Harness, step: str) -> None:
    h.engine.fail(step, EngineUnavailable(f"{step}: Docker engine unreachable"))
    task = h.claimed()
    execution = h.execute(task)
    done = h.store.load_task(task.id)
    assert done.status is TaskStatus.QUEUED and done.infra_attempts == 0
    assert (done.msg or "").startswith("waiting: the Docker engine became unreachable")
    assert execution.engine_unreachable and not h.context.engine_ok.is_set()
    assert h.kinds(task.id)[-1] == "released"


def test_a_command_the_engine_cannot_start_is_a_setup_error(h: Harness) -> None:
    h.engine.fail("start", TaskSetupError("start container: exec: no such file or directory"))
    task = h.claimed()
    h.execute(task)
    done = h.store.load_task(task.id)
    assert done.status is TaskStatus.ERROR and done.msg == "start container: exec: no such file or directory"
    assert h.engine.containers == {}


def test_a_failed_kill_on_cancel_is_an_infrastructure_failure(h: Harness) -> None:
    h.engine.program(Script(release=threading.Event()))
    h.engine.fail("kill")
    task = h.claimed(timeout=1)
    h.execute(task)
    done = h.store.load_task(task.id)
    assert done.status is TaskStatus.QUEUED and done.infra_attempts == 1
    assert "kill: engine error 500" in (done.msg or "")
    assert "remove" in h.engine.calls


def test_a_failed_removal_keeps_the_outcome_and_says_which_task(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    h.engine.fail("remove")
    task = h.claimed()
    with caplog.at_level(logging.WARNING):
        h.execute(task)
    assert h.store.load_task(task.id).status is TaskStatus.COMPLETE
    (record,) = [r for r in caplog.records if r.getMessage() == "container.remove_failed"]
    assert record.__dict__["task_id"] == task.id
    assert "injected" in record.__dict__["error"]


# --- the store and the host failing -----------------------------------------------------------


def test_a_failed_final_report_is_retried_and_the_work_not_redone(
    h: Harness, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real_finish = h.store.finish
    failures = [OSError("database is locked"), OSError("database is locked")]

    def flaky_finish(*args: object) -> bool:
        if failures:
            raise failures.pop(0)
        return real_finish(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(h.store, "finish", flaky_finish)
    task = h.claimed()
    with caplog.at_level(logging.WARNING):
        h.execute(task)
    done = h.store.load_task(task.id)
    assert done.status is TaskStatus.COMPLETE and done.attempts == 1
    assert failures == []
    failed = [r for r in caplog.records if r.getMessage() == "task.report_failed"]
    assert failed and all(r.__dict__["task_id"] == task.id for r in failed)
    assert len(h.engine.removed) == 1  # one container: the work ran once


def test_a_report_that_keeps_failing_is_given_up_when_the_runner_stops(
    h: Harness, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def down(*args: object) -> bool:
        raise OSError("the store is down")

    monkeypatch.setattr(h.store, "finish", down)
    task = h.claimed()
    h.context.abandon.set()
    with caplog.at_level(logging.ERROR):
        h.execute(task)  # returns: it gave up
    assert h.store.load_task(task.id).status is TaskStatus.RUNNING  # the lease will expire
    (record,) = [r for r in caplog.records if r.getMessage() == "task.report_abandoned"]
    assert record.__dict__["task_id"] == task.id


def test_a_full_disk_while_unpacking_holds_the_task_without_spending_its_budget(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(*args: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(h.context.code_cache, "directory_for", full)
    task = h.claimed()
    execution = h.execute(task)
    done = h.store.load_task(task.id)
    assert done.status is TaskStatus.QUEUED and done.infra_attempts == 0 and done.attempts == 0
    assert (done.msg or "").startswith("waiting: the runner's host has no space left")
    assert execution.host_storage_full and not h.context.host_ok.is_set()
    assert h.engine.calls == []  # no container was made


def test_a_bug_is_logged_with_the_task_id_and_retried(
    h: Harness, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: object) -> None:
        raise TypeError("a bug")

    monkeypatch.setattr(h.store, "mark_running", broken)
    task = h.claimed()
    with caplog.at_level(logging.ERROR):
        h.execute(task)
    done = h.store.load_task(task.id)
    assert done.status is TaskStatus.QUEUED and "runner failure: TypeError: a bug" in (done.msg or "")
    (record,) = [r for r in caplog.records if r.getMessage() == "task.crashed"]
    assert record.__dict__["task_id"] == task.id


def test_the_log_cap_counts_earlier_attempts(tmp_path: Path) -> None:
    from dockworker.settings import Limits

    h = Harness(tmp_path, limits=Limits(memory_mb=64, log_bytes=1000))
    try:
        h.code()
        h.engine.program(Script(output=[b"x" * 800]), Script(output=[b"y" * 800]))
        task = h.claimed()
        h.engine.fail("wait")  # the first attempt fails after its output
        h.execute(task)
        assert h.store.load_task(task.id).status is TaskStatus.QUEUED
        h.execute(h.claim_again(task.id))
        log = h.store.read_log(task.id)
        assert h.store.load_task(task.id).status is TaskStatus.COMPLETE
        assert log.count(b"[dockworker: log truncated at 1000 bytes]") == 1
        assert len(log) < 1000 + 200
        assert log.startswith(b"x" * 800) and b"attempt 2, after an infrastructure failure" in log
    finally:
        h.close()


def test_a_lease_lost_before_the_start_ends_the_container_and_counts_the_attempt(h: Harness) -> None:
    h.engine.program(Script(release=threading.Event()))
    task = h.claimed()
    h.store.release(task.id, h.context.runner_id, "taken away")  # as an expiry would
    h.execute(task)
    done = h.store.load_task(task.id)
    assert done.status is TaskStatus.QUEUED and done.attempts == 1
    assert "late_report_refused" in h.kinds(task.id)
    assert h.engine.containers == {}


def test_a_readopted_container_is_followed_from_where_the_store_stopped(h: Harness) -> None:
    task = h.claimed()
    assert h.store.mark_running(task.id, h.context.runner_id, 1.0, "c")
    h.store.append_log(task.id, b"one\n", 4)
    release = threading.Event()
    h.engine.images.add("x")
    container = h.engine.adopt_running(
        ContainerSpec(image="x", command=[], labels={"dockworker.task": task.id}),
        Script(output=[b"one\n", b"two\n"], release=release),
    )
    release.set()
    h.execute(h.store.load_task(task.id), adopt=container)
    done = h.store.load_task(task.id)
    assert done.status is TaskStatus.COMPLETE
    assert h.store.read_log(task.id) == b"one\ntwo\n"
    assert "readopted" in h.kinds(task.id)
    assert h.engine.containers == {}


# --- what the task used -------------------------------------------------------------------------


def test_what_the_container_used_is_reported_with_its_outcome(h: Harness) -> None:
    h.engine.program(Script(usage=ResourceUsage(cpu_time_ms=1500, peak_memory_bytes=150 * 1024 * 1024)))
    task = h.claimed()
    h.execute(task)
    done = h.store.load_task(task.id)
    assert done.status is TaskStatus.COMPLETE
    assert (done.cpu_time_ms, done.peak_memory_bytes) == (1500, 150 * 1024 * 1024)
    # read once the container ended, before it was removed
    assert h.engine.calls.index("wait") < h.engine.calls.index("usage") < h.engine.calls.index("remove")


def test_a_container_killed_at_its_deadline_is_measured_after_the_kill(h: Harness) -> None:
    h.engine.program(Script(release=threading.Event(), usage=ResourceUsage(cpu_time_ms=7)))
    task = h.claimed(timeout=1)
    h.execute(task)
    done = h.store.load_task(task.id)
    assert done.status is TaskStatus.TIMEOUT and done.cpu_time_ms == 7 and done.peak_memory_bytes is None
    assert h.engine.calls.index("kill") < h.engine.calls.index("usage") < h.engine.calls.index("remove")


def test_usage_the_engine_cannot_read_is_null_and_the_outcome_stands(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    h.engine.fail("usage")
    task = h.claimed()
    with caplog.at_level(logging.WARNING):
        h.execute(task)
    done = h.store.load_task(task.id)
    assert done.status is TaskStatus.COMPLETE and done.infra_attempts == 0
    assert done.cpu_time_ms is None and done.peak_memory_bytes is None
    (record,) = [r for r in caplog.records if r.getMessage() == "container.usage_unknown"]
    assert record.__dict__["task_id"] == task.id and "injected" in record.__dict__["error"]
    assert h.engine.containers == {}


def test_a_readopted_container_is_measured(h: Harness) -> None:
    task = h.claimed()
    assert h.store.mark_running(task.id, h.context.runner_id, 1.0, "c")
    h.engine.images.add("x")
    container = h.engine.adopt_running(
        ContainerSpec(image="x", command=[], labels={"dockworker.task": task.id}),
        Script(usage=ResourceUsage(cpu_time_ms=42, peak_memory_bytes=4096)),
    )
    h.execute(h.store.load_task(task.id), adopt=container)
    done = h.store.load_task(task.id)
    assert (done.status, done.cpu_time_ms, done.peak_memory_bytes) == (TaskStatus.COMPLETE, 42, 4096)


# --- the progress channel -------------------------------------------------------------------------


def test_progress_reaches_the_store_while_running_and_stays_at_the_end(h: Harness) -> None:
    release = threading.Event()
    h.engine.program(Script(release=release, progress=[b'{"percent": 10, "msg": "starting"}\n']))
    task = h.claimed()
    execution = threading.Thread(target=h.execute, args=(task,))
    execution.start()
    h.engine.wait_until(lambda: h.store.load_task(task.id).percent == 10)
    assert h.store.load_task(task.id).msg == "starting"
    container = h.engine.only()
    assert container.spec.env["PROGRESS_FILE"] == "/mnt/task/progress"
    (bind,) = [b for b in container.spec.binds if b.target == "/mnt/task/progress"]
    assert not bind.read_only
    h.engine.write_progress(container.id, b"60 most of it\n")
    h.engine.wait_until(lambda: h.store.load_task(task.id).percent == 60, timeout=5)
    h.engine.write_progress(container.id, b"90\n")  # within a second: held, then sent at the end
    release.set()
    execution.join(10)
    done = h.store.load_task(task.id)
    assert (done.status, done.percent, done.msg) == (TaskStatus.COMPLETE, 90, "most of it")
    assert not (h.settings.task_dirs / task.id).exists()


def test_the_last_report_before_the_exit_is_kept(h: Harness) -> None:
    h.engine.program(Script(exit_code=2, progress=[b"10 a\n", b'{"percent": 100, "msg": "written last"}']))
    task = h.claimed()
    h.execute(task)
    done = h.store.load_task(task.id)
    # an error's msg is the runner's (as IronWorker's); the percent stays the worker's
    assert (done.status, done.percent, done.msg) == (TaskStatus.ERROR, 100, "exit code 2")


def test_a_complete_task_without_reports_has_no_progress(h: Harness) -> None:
    h.engine.program(Script())
    task = h.claimed()
    h.execute(task)
    done = h.store.load_task(task.id)
    assert (done.status, done.percent, done.msg) == (TaskStatus.COMPLETE, None, None)


def test_a_refused_line_is_recorded_once_and_earlier_reports_count(h: Harness) -> None:
    h.engine.program(Script(progress=[b"70 fine\n", b"half way\n", b"\x00\xff garbage\n"]))
    task = h.claimed()
    h.execute(task)
    done = h.store.load_task(task.id)
    assert (done.percent, done.msg) == (70, "fine")
    (refusal,) = [e for e in h.store.list_events(task.id) if e.kind == "progress_refused"]
    assert refusal.detail.startswith("progress line refused: ")


def test_a_new_attempt_starts_without_the_earlier_progress(h: Harness) -> None:
    h.engine.program(Script(progress=[b"80 first attempt\n"]), Script())
    task = h.claimed()
    h.engine.fail("wait")  # the first attempt fails after its report
    h.execute(task)
    assert h.store.load_task(task.id).status is TaskStatus.QUEUED
    h.execute(h.claim_again(task.id))
    done = h.store.load_task(task.id)
    assert (done.status, done.percent, done.msg) == (TaskStatus.COMPLETE, None, None)


def test_progress_after_the_lease_is_lost_is_not_written(h: Harness) -> None:
    release = threading.Event()
    h.engine.program(Script(release=release))
    task = h.claimed()
    execution = threading.Thread(target=h.execute, args=(task,))
    execution.start()
    h.engine.wait_until(lambda: h.store.load_task(task.id).status is TaskStatus.RUNNING)
    h.store.release(task.id, h.context.runner_id, "taken away")  # as an expiry would
    h.engine.write_progress(h.engine.only().id, b"50 too late\n")
    release.set()
    execution.join(10)
    done = h.store.load_task(task.id)
    assert (done.status, done.percent) == (TaskStatus.QUEUED, None)
    assert done.msg is not None and done.msg.startswith("waiting: ")


def test_a_readopted_container_reports_through_the_fifo_that_outlived_the_runner(h: Harness) -> None:
    from dockworker.engine import Bind
    from dockworker.runner.progress import make_fifo

    task = h.claimed()
    assert h.store.mark_running(task.id, h.context.runner_id, time.time(), "c")
    task_dir = h.settings.task_dirs / task.id
    task_dir.mkdir(parents=True)
    fifo = make_fifo(task_dir, "progress", os.getgid())  # as the earlier runner process made it
    h.engine.images.add("x")
    release = threading.Event()
    container = h.engine.adopt_running(
        ContainerSpec(
            image="x",
            command=[],
            labels={"dockworker.task": task.id},
            binds=(Bind(source=str(fifo), target="/mnt/task/progress", read_only=False),),
        ),
        Script(release=release),
    )
    # The worker writes while no runner reads: its open waits for the runner to come back.
    blocked_writer = threading.Thread(target=lambda: fifo.write_bytes(b"40 while the runner was away\n"))
    blocked_writer.start()
    time.sleep(0.2)
    assert blocked_writer.is_alive()
    execution = threading.Thread(
        target=h.execute, args=(h.store.load_task(task.id),), kwargs={"adopt": container}
    )
    execution.start()
    blocked_writer.join(10)
    h.engine.wait_until(lambda: h.store.load_task(task.id).percent == 40)
    h.engine.write_progress(container, b"95 after the re-adoption\n")
    release.set()
    execution.join(10)
    done = h.store.load_task(task.id)
    assert (done.status, done.percent, done.msg) == (TaskStatus.COMPLETE, 95, "after the re-adoption")
    assert not task_dir.exists()
