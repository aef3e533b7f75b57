"""Infrastructure failures on the real engine: an engine that goes away, orphaned containers,
leases left by an earlier runner process."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dockworker.engine import ContainerSpec, DockerEngine
from dockworker.errors import EngineUnavailable
from dockworker.models import CodeSpec
from dockworker.names import INSTALLATION_LABEL, RUNNER_LABEL, TASK_LABEL
from dockworker.runner import Runner
from dockworker.scheduler import Housekeeper
from dockworker.settings import Settings
from dockworker.states import EventKind, TaskStatus
from dockworker.store import Store
from tests.conftest import BUSYBOX_IMAGE, StartRunner
from tests.helpers import left_after, queue, save_code, wait_for

# The runner's side of the store, so on every dialect.
pytestmark = [pytest.mark.docker, pytest.mark.dialects("sqlite", "postgresql")]

DOCKER_SOCKET = "/var/run/docker.sock"


class EngineProxy:
    """A Unix socket in front of the engine's that can be cut, as when dockerd stops."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.up = threading.Event()
        self.up.set()
        self.failing = threading.Event()
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(str(path))
        self._server.listen(64)
        self._closing = False
        self._open: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"unix://{self.path}"

    def _accept(self) -> None:
        while not self._closing:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            if self.failing.is_set():
                threading.Thread(target=self._answer_500, args=(client,), daemon=True).start()
                continue
            if not self.up.is_set():
                client.close()
                continue
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            upstream.connect(DOCKER_SOCKET)
            self._open += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _answer_500(client: socket.socket) -> None:
        """Answer every request as an engine in trouble would."""
        with contextlib.suppress(OSError), client:
            buffered = b""
            while True:
                data = client.recv(65536)
                if not data:
                    return
                buffered += data
                while b"\r\n\r\n" in buffered:
                    head, _, buffered = buffered.partition(b"\r\n\r\n")
                    length = next(
                        (
                            int(line.split(b":")[1])
                            for line in head.split(b"\r\n")
                            if line.lower().startswith(b"content-length:")
                        ),
                        0,
                    )
                    while len(buffered) < length:
                        buffered += client.recv(65536)
                    buffered = buffered[length:]
                    body = b'{"message":"engine trouble"}'
                    client.sendall(
                        b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\n"
                        + b"Content-Length: "
                        + str(len(body)).encode()
                        + b"\r\n\r\n"
                        + body
                    )

    def answer_500(self) -> None:
        """From now on, answer every request with an HTTP 500."""
        self.cut()
        self.failing.set()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def cut(self) -> None:
        """Refuse new connections and break the open ones."""
        self.up.clear()
        for sock in self._open:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
                sock.close()
        self._open.clear()

    def restore(self) -> None:
        self.failing.clear()
        self.up.set()

    def close(self) -> None:
        self._closing = True
        self.cut()
        self._server.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


@pytest.fixture
def proxy(tmp_path: Path, engine: DockerEngine) -> Iterator[EngineProxy]:
    proxy = EngineProxy(tmp_path / "engine.sock")
    yield proxy
    proxy.close()


@pytest.fixture
def project(store: Store) -> str:
    project = store.create_project("test").id
    save_code(store, project, CodeSpec(name="hello", stack="busybox", command="echo hello", retries=3))
    return project


def test_engine_errors_retry_on_their_own_budget_then_error(
    store: Store, project: str, settings: Settings, proxy: EngineProxy, start_runner: StartRunner
) -> None:
    flaky = DockerEngine(proxy.url)
    proxy.answer_500()
    start_runner(settings.replace(infra_retry_budget=2), flaky)
    task = queue(store, project, "hello")
    done = wait_for(store, task.id, timeout=30)
    assert done.status is TaskStatus.ERROR
    assert done.msg is not None and done.msg.startswith("infrastructure error:")
    assert "engine error 500" in done.msg and "gave up after 3 attempts" in done.msg
    assert done.infra_attempts == 3
    # the user's retries (3 for this package) are not spent on infrastructure failures
    assert done.retry_count == 0 and done.retry_task_id is None
    kinds = [e.kind for e in store.list_events(task.id)]
    assert kinds.count(EventKind.INFRA_RETRY) == 2 and kinds[-1] == EventKind.ERROR
    flaky.close()


def test_an_unreachable_engine_holds_tasks_queued_until_it_answers(
    store: Store, project: str, settings: Settings, proxy: EngineProxy, start_runner: StartRunner
) -> None:
    flaky = DockerEngine(proxy.url)
    proxy.cut()
    start_runner(settings.replace(infra_retry_budget=1), flaky)
    task = queue(store, project, "hello")
    deadline = time.monotonic() + 10
    while "released" not in [e.kind for e in store.list_events(task.id)] and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(2.5)  # the runner pings its engine meanwhile; it claims nothing
    held = store.load_task(task.id)
    assert held.status is TaskStatus.QUEUED
    assert (held.msg or "").startswith("waiting: the Docker engine became unreachable")
    assert held.infra_attempts == 0 and held.attempts == 0 and held.retry_count == 0
    kinds = [e.kind for e in store.list_events(task.id)]
    assert kinds.count(EventKind.CLAIMED) == 1 and kinds.count(EventKind.RELEASED) == 1
    proxy.restore()
    done = wait_for(store, task.id, timeout=30)
    assert done.status is TaskStatus.COMPLETE, done.msg
    assert done.infra_attempts == 0 and done.attempts == 1
    assert store.read_log(task.id) == b"hello\n"
    flaky.close()


def test_engine_cut_while_running_leaves_no_container(
    store: Store,
    project: str,
    settings: Settings,
    proxy: EngineProxy,
    start_runner: StartRunner,
    engine: DockerEngine,
) -> None:
    # The task runs until the test lets it end (a file it adds to the task's code directory, which
    # the container sees through its bind mount): the cut falls while it runs, whatever the load.
    script = "echo go; while [ ! -e release ]; do sleep 0.1; done; echo end"
    save_code(store, project, CodeSpec(name="slow", stack="busybox", command="sh run.sh"), {"run.sh": script})
    flaky = DockerEngine(proxy.url)
    start_runner(settings.replace(infra_retry_base_delay_s=0.5), flaky)
    task = queue(store, project, "slow")
    wait_for(store, task.id, {"running"})
    proxy.cut()
    time.sleep(0.5)
    proxy.restore()
    (settings.code_cache_dir / store.get_revision(task.revision_id).checksum / "release").touch()  # type: ignore[operator]
    done = wait_for(store, task.id, timeout=40)
    # The engine went away under the task: it is handed back (or retried on the infrastructure
    # budget, depending on where the cut hit) and completes once the engine is back
    assert done.status is TaskStatus.COMPLETE, done.msg
    kinds = [e.kind for e in store.list_events(task.id)]
    assert "released" in kinds or "infra_retry" in kinds, kinds
    leftovers = left_after(
        lambda: [c.id for c in engine.list_labelled(TASK_LABEL) if c.labels.get(TASK_LABEL) == task.id]
    )
    assert leftovers == []
    flaky.close()


def test_orphans_are_removed_at_start_but_not_other_installations(
    store: Store, settings: Settings, engine: DockerEngine, start_runner: StartRunner
) -> None:
    ours = {TASK_LABEL: "0" * 24, RUNNER_LABEL: "someone-else", INSTALLATION_LABEL: store.installation_id()}
    theirs = {**ours, INSTALLATION_LABEL: "another-installation"}
    orphan = engine.create(ContainerSpec(image=BUSYBOX_IMAGE, command=["sleep", "300"], labels=ours))
    foreign = engine.create(ContainerSpec(image=BUSYBOX_IMAGE, command=["sleep", "300"], labels=theirs))
    try:
        engine.start(orphan)
        engine.start(foreign)
        runner: Runner = start_runner()
        deadline = time.monotonic() + 10
        while any(c.id == orphan for c in engine.list_labelled()) and time.monotonic() < deadline:
            time.sleep(0.05)
        remaining = {c.id for c in engine.list_labelled()}
        assert orphan not in remaining
        assert foreign in remaining
        assert runner.reap_orphans() == 0
    finally:
        engine.remove(foreign)
        engine.remove(orphan)


def test_tasks_leased_to_an_earlier_process_are_recovered(
    store: Store, project: str, settings: Settings, start_runner: StartRunner
) -> None:
    task = queue(store, project, "hello")
    claimed = store.claim(settings.runner_id or "", ["default"], 300)
    assert claimed is not None and claimed.id == task.id
    start_runner()
    done = wait_for(store, task.id, timeout=30)
    assert done.status is TaskStatus.COMPLETE
    # claimed by the earlier process but never started there: one execution in all
    assert done.infra_attempts == 1 and done.attempts == 1
    assert "infra_retry" in [e.kind for e in store.list_events(task.id)]


def test_unreachable_engine_is_classified(tmp_path: Path) -> None:
    with pytest.raises(EngineUnavailable, match="unreachable"):
        DockerEngine(f"unix://{tmp_path}/nothing.sock").ping()


def test_a_container_started_by_a_runner_that_died_before_saying_so_is_adopted(
    store: Store, project: str, settings: Settings, engine: DockerEngine, start_runner: StartRunner
) -> None:
    task = queue(store, project, "hello")
    runner_id = settings.runner_id or ""
    claimed = store.claim(runner_id, ["default"], 300)
    assert claimed is not None and claimed.status is TaskStatus.PREPARING
    # what the earlier process did just before it was killed: create and start the container
    labels = {TASK_LABEL: task.id, RUNNER_LABEL: runner_id, INSTALLATION_LABEL: store.installation_id()}
    spec = ContainerSpec(
        image=BUSYBOX_IMAGE, command=["sh", "-c", "echo early; sleep 1; echo late"], labels=labels
    )
    container = engine.create(spec)
    engine.start(container)
    start_runner()
    done = wait_for(store, task.id, timeout=30)
    assert done.status is TaskStatus.COMPLETE, done.msg
    assert done.attempts == 1 and done.infra_attempts == 0
    assert store.read_log(task.id) == b"early\nlate\n"
    assert [c for c in engine.list_labelled() if c.id == container] == []
    kinds = [e.kind for e in store.list_events(task.id)]
    assert "started" in kinds and "readopted" in kinds


def test_a_start_never_reported_is_counted_when_its_container_is_reaped(
    store: Store, project: str, settings: Settings, engine: DockerEngine, start_runner: StartRunner
) -> None:
    task = queue(store, project, "hello")
    assert store.claim("dead-runner", ["default"], lease_ttl=0.2) is not None
    labels = {TASK_LABEL: task.id, RUNNER_LABEL: "dead-runner", INSTALLATION_LABEL: store.installation_id()}
    ghost = engine.create(ContainerSpec(image=BUSYBOX_IMAGE, command=["sleep", "300"], labels=labels))
    engine.start(ghost)  # ...and the runner died before it could report the start
    time.sleep(0.3)
    Housekeeper(settings, store).tick()  # its lease expires: the task is queued again
    runner: Runner = start_runner()  # its reaper removes the ghost, counting its start
    done = wait_for(store, task.id, timeout=30)
    assert done.status is TaskStatus.COMPLETE
    assert done.attempts == 2  # both container starts are counted
    assert not [c for c in engine.list_labelled() if c.id == ghost]
    assert runner.reap_orphans() == 0
    assert next(e.detail for e in store.list_events(task.id) if e.kind == "started").endswith(
        "never reported"
    )
