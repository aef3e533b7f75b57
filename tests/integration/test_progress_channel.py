"""The progress channel on real containers, on the Docker engine and on the OCI backend: a worker
reports through $PROGRESS_FILE with plain shell I/O, the store holds it (seen through the API
while the task runs and after), and hostile writers neither slow the runner nor flood the store."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from dockworker.api import create_app
from dockworker.engine import Bind, ContainerSpec, DockerEngine
from dockworker.models import CodeSpec, Task
from dockworker.names import INSTALLATION_LABEL, RUNNER_LABEL, TASK_LABEL
from dockworker.runner.progress import make_fifo
from dockworker.settings import Settings
from dockworker.states import TaskStatus
from dockworker.store import Store
from tests.conftest import BUSYBOX_IMAGE, StartRunner
from tests.helpers import left_after, queue, save_code, wait_for

from . import oci_fixtures

pytestmark = [pytest.mark.docker, pytest.mark.timeout(120)]

# every test here runs on the Docker engine and on the OCI backend
engine = oci_fixtures.both_backends


@pytest.fixture
def project(store: Store) -> str:
    project = store.create_project("progress").id
    save_code(store, project, CodeSpec(name="ok", stack="busybox", command="echo fine"))
    return project


class ApiView:
    """The task as the API shows it."""

    def __init__(self, client: TestClient, project: str, token: str) -> None:
        self._client = client
        self._base = f"/2/projects/{project}/tasks"
        self._headers = {"Authorization": f"OAuth {token}"}

    def task(self, task_id: str) -> dict[str, Any]:
        response = self._client.get(f"{self._base}/{task_id}", headers=self._headers)
        assert response.status_code == 200, response.text
        answer: dict[str, Any] = response.json()
        return answer


@pytest.fixture
def api(settings: Settings, store: Store, project: str) -> Iterator[ApiView]:
    token, _ = store.create_token(project, "t")
    with TestClient(create_app(settings, store)) as client:
        yield ApiView(client, project, token)


@pytest.fixture
def progress_writes(store: Store, monkeypatch: pytest.MonkeyPatch) -> list[tuple[int | None, str | None]]:
    """Every report the runner hands to the store."""
    writes: list[tuple[int | None, str | None]] = []
    report = store.report_progress

    def counted(task_id: str, runner_id: str, percent: int | None, msg: str | None) -> bool:
        writes.append((percent, msg))
        return report(task_id, runner_id, percent, msg)

    monkeypatch.setattr(store, "report_progress", counted)
    return writes


def queue_script(store: Store, project: str, name: str, script: str, timeout: int = 30) -> Task:
    save_code(store, project, CodeSpec(name=name, stack="busybox", command="sh run.sh"), {"run.sh": script})
    return queue(store, project, name, timeout=timeout)


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.05)


def others_start_at_once(store: Store, project: str) -> None:
    other = queue(store, project, "ok")
    done = wait_for(store, other.id, timeout=30)
    assert done.status is TaskStatus.COMPLETE and store.read_log(done.id) == b"fine\n"
    assert done.start_time is not None and done.start_time - other.created_at < 5, "the runner was slowed"


def test_progress_is_seen_through_the_api_while_the_task_runs_and_after(
    store: Store, project: str, api: ApiView, start_runner: StartRunner
) -> None:
    start_runner()
    script = (
        'echo \'{"percent": 30, "msg": "a third"}\' > "$PROGRESS_FILE"\n'
        "sleep 4\n"
        'echo "100 all done" > "$PROGRESS_FILE"\n'
    )
    task = queue_script(store, project, "reporter", script)
    wait_until(lambda: api.task(task.id)["percent"] == 30, 15, "the first report")
    running = api.task(task.id)
    assert (running["status"], running["msg"]) == ("running", "a third")
    done = wait_for(store, task.id)
    assert done.status is TaskStatus.COMPLETE, done.msg
    ended = api.task(task.id)
    assert (ended["status"], ended["percent"], ended["msg"]) == ("complete", 100, "all done")


def test_the_channel_is_a_pipe_the_task_can_write_and_nothing_more(
    store: Store, project: str, settings: Settings, start_runner: StartRunner
) -> None:
    start_runner()
    script = "\n".join(
        [
            'p="$PROGRESS_FILE"; echo "path=$p"',
            '[ -p "$p" ] && echo is-a-fifo',
            '[ -w "$p" ] && echo writable',
            '[ -r "$p" ] || echo not-readable',
            'rm -f "$p" 2>/dev/null || echo cannot-remove',
            'mv "$p" "$TASK_DIR/moved" 2>/dev/null || echo cannot-move',
            'chmod 666 "$p" 2>/dev/null || echo cannot-chmod',
            'ln "$p" "$TASK_DIR/link" 2>/dev/null || echo cannot-link',
            'echo "55 written by uid $(id -u)" > "$p" && echo wrote',
        ]
    )
    done = wait_for(store, queue_script(store, project, "probe", script).id)
    log = store.read_log(done.id).decode()
    assert done.status is TaskStatus.COMPLETE, log
    for line in ("path=/mnt/task/progress", "is-a-fifo", "writable", "not-readable", "cannot-remove"):
        assert line in log.splitlines(), log
    for line in ("cannot-move", "cannot-chmod", "cannot-link", "wrote"):
        assert line in log.splitlines(), log
    assert (done.percent, done.msg) == (55, "written by uid 1000")
    # removed with the container, just after the outcome is reported
    task_dir = settings.task_dirs / done.id
    assert left_after(lambda: [str(task_dir)] if task_dir.exists() else []) == []


@pytest.mark.parametrize(
    "flood",
    [
        pytest.param('while :; do echo \'{"percent": 50, "msg": "flood"}\'; done', id="json-lines"),
        pytest.param("head -c 1000000000 /dev/zero", id="one-gigabyte-line"),
        pytest.param("cat /dev/urandom", id="binary-garbage"),
        pytest.param("while :; do echo; done", id="blank-lines"),
    ],
)
def test_a_flooding_writer_floods_nothing_and_slows_no_one(
    store: Store,
    project: str,
    start_runner: StartRunner,
    progress_writes: list[tuple[int | None, str | None]],
    flood: str,
) -> None:
    start_runner()
    task = queue_script(store, project, "flood", f'{flood} > "$PROGRESS_FILE"', timeout=5)
    wait_for(store, task.id, {"running"})
    others_start_at_once(store, project)
    done = wait_for(store, task.id, timeout=30)
    assert done.status is TaskStatus.TIMEOUT, done.msg
    assert done.duration_ms is not None and done.duration_ms < 5000 + 3000, "the deadline was late"
    assert len(progress_writes) <= 5 + 2, progress_writes  # one a second, and the last
    refusals = [e.detail for e in store.list_events(task.id) if e.kind == "progress_refused"]
    assert len(refusals) <= 1
    assert done.msg == "timed out after 5 s"  # the outcome's msg replaces the worker's
    if '"percent"' in flood:
        assert done.percent == 50 and progress_writes[0] == (50, "flood")
    elif "urandom" not in flood:  # a random line may happen to read as "PERCENT [MSG]"
        assert done.percent is None
    assert refusals or "echo" in flood


def test_a_report_after_an_over_long_line_and_garbage_still_counts(
    store: Store, project: str, start_runner: StartRunner
) -> None:
    start_runner()
    script = (
        '{ head -c 3000000 /dev/zero | tr "\\0" 9; echo; echo "42 after the long line"; } '
        '> "$PROGRESS_FILE"\n'
        "sleep 1.5\n"
        '{ head -c 100000 /dev/urandom; echo; } > "$PROGRESS_FILE"\n'
        'echo "43 after the garbage" > "$PROGRESS_FILE"\n'
    )
    done = wait_for(store, queue_script(store, project, "long", script, timeout=30).id)
    assert done.status is TaskStatus.COMPLETE, done.msg
    assert (done.percent, done.msg) == (43, "after the garbage")
    (refusal,) = [e.detail for e in store.list_events(done.id) if e.kind == "progress_refused"]
    assert refusal == "progress line refused: line longer than 65536 bytes"


def test_a_writer_holding_the_pipe_open_blocks_nothing(
    store: Store, project: str, api: ApiView, start_runner: StartRunner
) -> None:
    start_runner()
    script = (
        '(exec 3> "$PROGRESS_FILE"; sleep 600) &\n'  # holds it open to the end, and beyond
        'exec 4> "$PROGRESS_FILE"\n'
        'echo "20 held open" >&4\n'
        "sleep 2\n"
        'printf "25 the last line has no newline" >&4\n'
    )
    task = queue_script(store, project, "holder", script)
    wait_until(lambda: api.task(task.id)["percent"] == 20, 15, "the first report")
    done = wait_for(store, task.id)
    assert done.status is TaskStatus.COMPLETE, done.msg
    assert done.duration_ms is not None and done.duration_ms < 10_000
    assert (done.percent, done.msg) == (25, "the last line has no newline")


def test_nothing_written_after_the_exit_reaches_the_store(
    store: Store, project: str, start_runner: StartRunner
) -> None:
    start_runner()
    script = (
        '(sleep 1; echo "99 after the exit" > "$PROGRESS_FILE") &\necho "60 last words" > "$PROGRESS_FILE"\n'
    )
    done = wait_for(store, queue_script(store, project, "late", script).id)
    time.sleep(2)
    assert (done.status, done.percent, done.msg) == (TaskStatus.COMPLETE, 60, "last words")
    assert store.load_task(done.id).percent == 60


def test_a_readopted_container_keeps_reporting_through_its_fifo(
    store: Store, project: str, settings: Settings, engine: DockerEngine, start_runner: StartRunner
) -> None:
    save_code(store, project, CodeSpec(name="hello", stack="busybox", command="true"))
    task = queue(store, project, "hello")
    runner_id = settings.runner_id or ""
    assert store.claim(runner_id, ["default"], 300) is not None
    # What an earlier runner process did before it died: the FIFO, the container, its start.
    task_dir = settings.task_dirs / task.id
    task_dir.mkdir(parents=True)
    fifo = make_fifo(task_dir, "progress", 1000)
    script = (
        'echo "40 written while no runner read" > "$PROGRESS_FILE"; echo wrote-40; sleep 2; '
        'echo "90 after the re-adoption" > "$PROGRESS_FILE"'
    )
    labels = {TASK_LABEL: task.id, RUNNER_LABEL: runner_id, INSTALLATION_LABEL: store.installation_id()}
    spec = ContainerSpec(
        image=BUSYBOX_IMAGE,
        command=["sh", "-c", script],
        labels=labels,
        env={"PROGRESS_FILE": "/mnt/task/progress"},
        binds=(Bind(source=str(fifo), target="/mnt/task/progress", read_only=False),),
        tmpfs={"/mnt/task": "rw,size=1m,uid=1000,gid=1000"},
        memory_bytes=64 * 1024 * 1024,
    )
    container = engine.create(spec)
    engine.start(container)
    assert store.mark_running(task.id, runner_id, time.time(), container)
    time.sleep(1)  # the worker waits in its open: no reader yet
    start_runner()
    done = wait_for(store, task.id, timeout=30)
    assert done.status is TaskStatus.COMPLETE, done.msg
    assert "readopted" in [e.kind for e in store.list_events(task.id)]
    assert store.read_log(task.id) == b"wrote-40\n"
    assert (done.percent, done.msg) == (90, "after the re-adoption")
    assert not task_dir.exists()


def test_concurrent_writers_in_one_task_never_interleave(
    store: Store, project: str, start_runner: StartRunner
) -> None:
    start_runner()
    # four writers of lines of 3994 bytes, each in one write (under PIPE_BUF): each arrives whole
    script = (
        'pad=$(head -c 3990 /dev/zero | tr "\\0" 0)\n'
        'for w in 11 22 33 44; do echo "$w $pad" > "$TASK_DIR/line$w"; done\n'
        "for w in 11 22 33 44; do\n"
        '  (i=0; while [ $i -lt 100 ]; do cat "$TASK_DIR/line$w"; i=$((i+1)); done > "$PROGRESS_FILE") &\n'
        "done\n"
        "wait\n"
    )
    done = wait_for(store, queue_script(store, project, "writers", script).id)
    assert done.status is TaskStatus.COMPLETE, done.msg
    assert done.percent in (11, 22, 33, 44) and done.msg == "0" * 3990
    assert [e for e in store.list_events(done.id) if e.kind == "progress_refused"] == []


def test_progress_of_many_tasks_at_once(store: Store, project: str, start_runner: StartRunner) -> None:
    start_runner()
    script = (
        'i=0; while [ $i -le 100 ]; do echo "$i step $i" > "$PROGRESS_FILE"; i=$((i+10)); sleep 0.1; done\n'
    )
    tasks = [queue_script(store, project, f"many{n}", script) for n in range(4)]
    finished: list[Task] = []

    def wait(task: Task) -> None:
        finished.append(wait_for(store, task.id))

    threads = [threading.Thread(target=wait, args=(task,)) for task in tasks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert (
        sorted((t.status, t.percent, t.msg) for t in finished) == [(TaskStatus.COMPLETE, 100, "step 100")] * 4
    )
