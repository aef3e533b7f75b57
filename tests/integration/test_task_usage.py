"""What each task used (CPU time, peak memory), measured for real on both backends: figures in
the ranges the tasks make certain, an OOM kill still measured, and no accounting cgroup left
behind, after a task, after a runner that died and the reaper."""

from __future__ import annotations

import subprocess
import time

import pytest

from dockworker.engine import ContainerSpec, DockerEngine, Engine
from dockworker.engine.cgroupfs import CgroupLayout
from dockworker.engine.docker_accounting import ROOT_DIR
from dockworker.engine.oci import OciEngine
from dockworker.models import CodeSpec, Task
from dockworker.names import INSTALLATION_LABEL, RUNNER_LABEL, TASK_LABEL
from dockworker.runner import Runner
from dockworker.settings import Settings
from dockworker.states import TaskStatus
from dockworker.store import Store
from tests.conftest import BUSYBOX_IMAGE, PYTHON_IMAGE, StartRunner, require
from tests.helpers import left_after, queue, save_code, wait_for

from . import oci_fixtures

pytestmark = pytest.mark.docker

# every test here runs on the Docker engine and on the OCI backend
engine = oci_fixtures.both_backends

MiB = 1024 * 1024
TOUCH_150_MIB = """\
block = bytearray(150 * 1024 * 1024)
for offset in range(0, len(block), 4096):
    block[offset] = 1
print("touched", len(block))
"""
SPIN_1_S = """\
import time
started = time.process_time()
while time.process_time() - started < 1.0:
    pass
print("spun")
"""
GROW_UNTIL_KILLED = """\
kept = []
while True:
    kept.append(bytearray(1024 * 1024))
"""


@pytest.fixture
def project(store: Store) -> str:
    return store.create_project("usage").id


@pytest.fixture
def python_image(engine: Engine) -> None:
    require(
        engine.image_exists(PYTHON_IMAGE), f"{PYTHON_IMAGE} missing: run 'dockworker stacks build python'"
    )


def parents_left(store: Store) -> list[str]:
    """The Docker adapter's accounting cgroups of this test's installation's tasks, in any
    hierarchy (the installation's own directory stays until the engine closes)."""
    installation = store.installation_id()
    return [
        str(path)
        for hierarchy in CgroupLayout.detect().hierarchies()
        for path in (hierarchy / ROOT_DIR / installation).glob("*")
        if path.is_dir()
    ]


def run_python(store: Store, project: str, name: str, script: str, memory_mb: int = 512) -> Task:
    save_code(
        store,
        project,
        CodeSpec(name=name, stack="python", command="python3 main.py", memory_mb=memory_mb),
        {"main.py": script},
    )
    return wait_for(store, queue(store, project, name, timeout=60).id, timeout=120)


def test_a_task_that_touches_150_mib_reports_at_least_that(
    store: Store, project: str, start_runner: StartRunner, python_image: None
) -> None:
    start_runner()
    done = run_python(store, project, "alloc", TOUCH_150_MIB)
    assert done.status is TaskStatus.COMPLETE, done.msg
    assert done.peak_memory_bytes is not None and done.cpu_time_ms is not None
    assert 150 * MiB <= done.peak_memory_bytes < 512 * MiB
    assert left_after(lambda: parents_left(store)) == []  # removed just after the report


def test_a_task_spinning_for_one_cpu_second_reports_about_that(
    store: Store, project: str, start_runner: StartRunner, python_image: None
) -> None:
    start_runner()
    done = run_python(store, project, "spin", SPIN_1_S)
    assert done.status is TaskStatus.COMPLETE, done.msg
    # the interpreter's own second of CPU, plus its start and the runtime's (tens of ms here)
    assert done.cpu_time_ms is not None and 1000 <= done.cpu_time_ms < 2500
    assert done.peak_memory_bytes is not None and done.peak_memory_bytes < 100 * MiB


def test_a_task_that_does_nothing_reports_small_figures(
    store: Store, project: str, start_runner: StartRunner
) -> None:
    save_code(store, project, CodeSpec(name="noop", stack="busybox", command="true"))
    start_runner()
    done = wait_for(store, queue(store, project, "noop").id)
    assert done.status is TaskStatus.COMPLETE, done.msg
    assert done.cpu_time_ms is not None and 0 <= done.cpu_time_ms < 500
    assert done.peak_memory_bytes is not None and 0 < done.peak_memory_bytes < 32 * MiB
    assert left_after(lambda: parents_left(store)) == []  # removed just after the report


def test_an_oom_killed_task_reports_a_peak_near_its_limit(
    store: Store, project: str, start_runner: StartRunner, python_image: None
) -> None:
    start_runner()
    done = run_python(store, project, "grow", GROW_UNTIL_KILLED, memory_mb=64)
    assert done.status is TaskStatus.ERROR and (done.msg or "").startswith("out of memory"), done.msg
    assert done.peak_memory_bytes is not None and done.cpu_time_ms is not None
    # the limit, give or take the charge batches and (OCI) the leaf's margin above the parent
    assert 60 * MiB <= done.peak_memory_bytes <= 64 * MiB + 4 * MiB
    assert left_after(lambda: parents_left(store)) == []  # removed just after the report


def test_a_task_killed_at_its_timeout_is_measured_too(
    store: Store, project: str, start_runner: StartRunner
) -> None:
    save_code(store, project, CodeSpec(name="sleepy", stack="busybox", command="sleep 30"))
    start_runner()
    done = wait_for(store, queue(store, project, "sleepy", timeout=1).id)
    assert done.status is TaskStatus.TIMEOUT
    assert done.cpu_time_ms is not None and done.peak_memory_bytes is not None
    assert left_after(lambda: parents_left(store)) == []  # removed just after the report


def _labels(store: Store, task_id: str, runner_id: str) -> dict[str, str]:
    return {TASK_LABEL: task_id, RUNNER_LABEL: runner_id, INSTALLATION_LABEL: store.installation_id()}


def test_a_container_re_adopted_after_its_runner_died_is_measured(
    store: Store, project: str, settings: Settings, engine: Engine, start_runner: StartRunner
) -> None:
    save_code(store, project, CodeSpec(name="hello", stack="busybox", command="true"))
    task = queue(store, project, "hello")
    runner_id = settings.runner_id or ""
    assert store.claim(runner_id, ["default"], 300) is not None
    # what the earlier process did before it was killed: the container runs, and ends unwatched
    spec = ContainerSpec(
        image=BUSYBOX_IMAGE,
        command=["sh", "-c", "echo early; sleep 1"],
        labels=_labels(store, task.id, runner_id),
    )
    container = engine.create(spec)
    engine.start(container)
    assert store.mark_running(task.id, runner_id, time.time(), container)
    engine.wait(container)
    start_runner()
    done = wait_for(store, task.id, timeout=30)
    assert done.status is TaskStatus.COMPLETE, done.msg
    assert "readopted" in [e.kind for e in store.list_events(task.id)]
    assert done.cpu_time_ms is not None and done.peak_memory_bytes is not None
    assert left_after(lambda: parents_left(store)) == []  # removed just after the report


def test_the_reaper_removes_the_accounting_of_a_dead_runners_tasks(
    store: Store, project: str, engine: Engine, start_runner: StartRunner
) -> None:
    save_code(store, project, CodeSpec(name="hello", stack="busybox", command="true"))
    ended, active = queue(store, project, "hello"), queue(store, project, "hello")
    store.request_cancel(project, ended.id)
    assert store.claim("dead-runner", ["default"], 300) is not None  # ``active``
    # what a runner killed mid-task leaves: a container of a task since ended, one of a task
    # still active (another runner's, which the reaper leaves alone)
    for task in (ended, active):
        engine.start(engine.create(_spec(store, task.id)))
    docker = not isinstance(engine, OciEngine)
    if docker:
        # and one killed between removing its container and the container's parent cgroup
        ghost = engine.create(_spec(store, "f" * 24))
        subprocess.run(["docker", "rm", "-f", ghost], check=True, capture_output=True)
        assert _accounted(engine, store) == {ended.id, active.id, "f" * 24}
    runner: Runner = start_runner()
    expected = {active.id} if docker else set()
    deadline = time.monotonic() + 20
    while (_tasks_with_containers(engine, store), _accounted(engine, store)) != ({active.id}, expected):
        assert time.monotonic() < deadline, (_tasks_with_containers(engine, store), _accounted(engine, store))
        time.sleep(0.1)
    for container in engine.list_labelled(f"{INSTALLATION_LABEL}={store.installation_id()}"):
        engine.remove(container.id)
    runner.reap_orphans()
    assert parents_left(store) == [] and _accounted(engine, store) == set()


def _tasks_with_containers(engine: Engine, store: Store) -> set[str]:
    found = engine.list_labelled(f"{INSTALLATION_LABEL}={store.installation_id()}")
    return {c.labels[TASK_LABEL] for c in found}


def _spec(store: Store, task_id: str) -> ContainerSpec:
    return ContainerSpec(
        image=BUSYBOX_IMAGE, command=["sleep", "300"], labels=_labels(store, task_id, "dead-runner")
    )


def _accounted(engine: Engine, store: Store) -> set[str]:
    return engine.accounted_tasks(store.installation_id())


def test_parents_left_is_able_to_see_a_parent(store: Store, engine: Engine) -> None:
    """The leak checks above would pass on a host where nothing is ever made: not here."""
    if isinstance(engine, OciEngine):
        pytest.skip("the OCI backend's cgroups are checked by its own fixture (oci_fixtures.leftovers)")
    container = engine.create(_spec(store, "e" * 24))
    try:
        assert parents_left(store) != []
        assert _accounted(engine, store) == {"e" * 24}
    finally:
        engine.remove(container)
    assert parents_left(store) == []


def test_the_installations_directory_stays_until_the_engine_closes(store: Store) -> None:
    """runc makes a container's cgroup path one directory after another: the installation's
    directory removed meanwhile by another task's clean-up failed that container's start. It
    stays while the engine is in use, and is tidied away when it closes."""
    own = DockerEngine()
    installation_dirs = [h / ROOT_DIR / store.installation_id() for h in CgroupLayout.detect().hierarchies()]
    try:
        container = own.create(_spec(store, "f" * 24))
        own.start(container)
        own.remove(container)
        assert parents_left(store) == []
        assert [d for d in installation_dirs if d.is_dir()] != []  # pids, cpuset... made by runc
    finally:
        own.close()
    assert [d for d in installation_dirs if d.is_dir()] == []
