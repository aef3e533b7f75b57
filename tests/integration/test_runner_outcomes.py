"""Every task outcome reached for real, on the real Docker engine."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from dockworker.engine import DockerEngine
from dockworker.models import CodeSpec
from dockworker.names import RUNNER_LABEL
from dockworker.settings import Settings
from dockworker.states import TaskStatus
from dockworker.store import Store
from tests.conftest import StartRunner
from tests.helpers import left_after, queue, save_code, wait_for

from . import oci_fixtures

pytestmark = pytest.mark.docker

# every test here runs on the Docker engine and on the OCI backend
engine = oci_fixtures.both_backends


@pytest.fixture
def project(store: Store) -> str:
    return store.create_project("test").id


def _containers_of(engine: DockerEngine, settings: Settings) -> list[str]:
    """The runner's containers left once it has had the time to remove them (it does so just
    after reporting the outcome)."""
    return left_after(
        lambda: [
            c.id
            for c in engine.list_labelled(RUNNER_LABEL)
            if c.labels.get(RUNNER_LABEL) == settings.runner_id
        ]
    )


def test_complete_with_contract(
    store: Store, project: str, start_runner: StartRunner, engine: DockerEngine, settings: Settings
) -> None:
    script = (
        'echo "id=$TASK_ID dir=$TASK_DIR"; cat "$PAYLOAD_FILE"; echo; cat "$CONFIG_FILE"; echo; '
        'echo "user=$(id -u) var=$GREETING"; echo err >&2'
    )
    save_code(
        store,
        project,
        CodeSpec(
            name="hello",
            stack="busybox",
            command="sh main.sh",
            config="cfg-value",
            env_vars={"GREETING": "hi"},
        ),
        {"main.sh": script},
    )
    start_runner()
    task = queue(store, project, "hello", payload='{"n": 1}')
    done = wait_for(store, task.id)
    log = store.read_log(task.id).decode()
    assert done.status is TaskStatus.COMPLETE, done.msg
    assert done.exit_code == 0
    assert f"id={task.id} dir=/mnt/task" in log
    assert '{"n": 1}' in log
    assert "cfg-value" in log
    assert "user=1000 var=hi" in log
    assert "err" in log
    assert done.start_time is not None and done.end_time is not None
    assert [e.kind for e in store.list_events(task.id)][:4] == [
        "queued",
        "claimed",
        "container_created",
        "started",
    ]
    assert _containers_of(engine, settings) == []


def test_nonzero_exit_is_error(store: Store, project: str, start_runner: StartRunner) -> None:
    save_code(store, project, CodeSpec(name="fails", stack="busybox", command="sh -c 'echo bye; exit 3'"))
    start_runner()
    done = wait_for(store, queue(store, project, "fails").id)
    assert done.status is TaskStatus.ERROR
    assert done.exit_code == 3
    assert done.msg == "exit code 3: bye"


def test_timeout_kills_the_container(
    store: Store, project: str, start_runner: StartRunner, engine: DockerEngine, settings: Settings
) -> None:
    save_code(store, project, CodeSpec(name="sleeper", stack="busybox", command="sleep 300"))
    start_runner()
    # a 300 s sleep that ends within the wait: it was killed at its deadline
    done = wait_for(store, queue(store, project, "sleeper", timeout=2).id, timeout=60)
    assert done.status is TaskStatus.TIMEOUT
    assert done.msg == "timed out after 2 s"
    # the clock starts when the container starts: it ran at least its 2 s
    assert done.duration_ms is not None and done.duration_ms >= 1900
    assert _containers_of(engine, settings) == []


def test_out_of_memory_is_reported(store: Store, project: str, start_runner: StartRunner) -> None:
    # busybox's `head -c` of /dev/zero into a shell variable grows the shell past the limit
    command = "sh -c 'x=$(head -c 200000000 /dev/zero | tr \"\\\\0\" a); echo survived'"
    save_code(store, project, CodeSpec(name="hog", stack="busybox", command=command, memory_mb=32))
    start_runner()
    done = wait_for(store, queue(store, project, "hog").id)
    assert done.status is TaskStatus.ERROR
    assert done.msg is not None and done.msg.startswith("out of memory"), done.msg
    assert "32 MB" in done.msg


def test_fork_bomb_is_contained_by_the_pids_limit(
    store: Store, project: str, start_runner: StartRunner
) -> None:
    script = "i=0; while [ $i -lt 2000 ]; do sleep 30 & i=$((i+1)); done; echo spawned-all"
    save_code(
        store,
        project,
        CodeSpec(name="forks", stack="busybox", command="sh fork.sh", pids=64),
        {"fork.sh": script},
    )
    save_code(store, project, CodeSpec(name="ok", stack="busybox", command="echo fine"))
    start_runner()
    bomb = queue(store, project, "forks", timeout=20)
    done = wait_for(store, bomb.id, timeout=40)
    assert "spawned-all" not in store.read_log(bomb.id).decode()
    assert done.status in (TaskStatus.ERROR, TaskStatus.TIMEOUT)
    other = wait_for(store, queue(store, project, "ok").id)
    assert other.status is TaskStatus.COMPLETE


def test_the_log_keeps_the_order_the_worker_wrote_in_across_stdout_and_stderr(
    store: Store, project: str, start_runner: StartRunner
) -> None:
    script = 'i=0; while [ $i -lt 200 ]; do echo "out $i"; echo "err $i" >&2; i=$((i+1)); done'
    save_code(store, project, CodeSpec(name="both", stack="busybox", command="sh run.sh"), {"run.sh": script})
    start_runner()
    tasks = [queue(store, project, "both") for _ in range(3)]
    expected = "".join(f"out {i}\nerr {i}\n" for i in range(200))
    for task in tasks:
        done = wait_for(store, task.id)
        assert done.status is TaskStatus.COMPLETE, done.msg
        assert store.read_log(task.id).decode() == expected


def test_an_images_own_entrypoint_and_command_still_run(
    store: Store, project: str, start_runner: StartRunner, engine: DockerEngine
) -> None:
    """A package without a command runs its image's default command (and an entrypoint, were
    there one) exactly as the engine would, stderr on stdout or not."""
    save_code(store, project, CodeSpec(name="default", stack="busybox"), None)
    start_runner()
    done = wait_for(store, queue(store, project, "default").id)
    # the busybox stack's default command is a shell with no input: it ends at once
    assert done.status is TaskStatus.COMPLETE, done.msg


def test_command_not_found(store: Store, project: str, start_runner: StartRunner) -> None:
    save_code(store, project, CodeSpec(name="nocmd", stack="busybox", command="no-such-binary --flag"))
    start_runner()
    done = wait_for(store, queue(store, project, "nocmd").id)
    assert done.status is TaskStatus.ERROR
    assert done.msg is not None and done.msg.startswith("exit code 127 (command not found): ")
    assert "no-such-binary" in done.msg  # the engine's init says which command failed


def test_missing_image_fails_cleanly(store: Store, project: str, start_runner: StartRunner) -> None:
    save_code(store, project, CodeSpec(name="ghost", image="dockworker-test/missing:1", command="true"))
    start_runner()
    done = wait_for(store, queue(store, project, "ghost").id)
    assert done.status is TaskStatus.ERROR
    assert done.msg is not None and "image not found" in done.msg
    assert done.infra_attempts == 0


def test_cancel_running_task_kills_it(
    store: Store, project: str, start_runner: StartRunner, engine: DockerEngine, settings: Settings
) -> None:
    save_code(
        store, project, CodeSpec(name="long", stack="busybox", command="sh -c 'echo started; sleep 300'")
    )
    start_runner()
    task = queue(store, project, "long")
    wait_for(store, task.id, {"running"})
    store.request_cancel(project, task.id)
    done = wait_for(store, task.id, timeout=60)  # far less than its 300 s sleep: it was killed
    assert done.status is TaskStatus.CANCELLED
    assert done.msg == "cancelled by user"
    assert "started" in store.read_log(task.id).decode()
    time.sleep(0.3)
    assert _containers_of(engine, settings) == []


def test_cancel_queued_task_never_runs(store: Store, project: str, start_runner: StartRunner) -> None:
    save_code(store, project, CodeSpec(name="later", stack="busybox", command="echo ran"))
    task = queue(store, project, "later", delay=2)
    cancelled = store.request_cancel(project, task.id)
    assert cancelled.status is TaskStatus.CANCELLED
    start_runner()
    time.sleep(2.5)
    assert store.load_task(task.id).status is TaskStatus.CANCELLED
    assert store.read_log(task.id) == b""


def test_log_is_capped_with_a_marker(
    store: Store, project: str, start_runner: StartRunner, settings: Settings
) -> None:
    from dockworker.settings import Limits

    small = settings.replace(limits=Limits(memory_mb=128, log_bytes=10_000))
    save_code(
        store,
        project,
        CodeSpec(name="flood", stack="busybox", command="sh -c 'yes flood | head -c 1000000; echo'"),
    )
    start_runner(small)
    done = wait_for(store, queue(store, project, "flood").id)
    log = store.read_log(done.id)
    assert done.status is TaskStatus.COMPLETE
    assert log.endswith(b"[dockworker: log truncated at 10000 bytes]\n")
    assert len(log) < 10_100


def test_isolation_defaults(store: Store, project: str, start_runner: StartRunner) -> None:
    script = "\n".join(
        [
            "touch /probe 2>/dev/null && echo root-writable || echo root-readonly",
            "touch /tmp/probe && echo tmp-writable",
            "touch /mnt/code/probe 2>/dev/null && echo code-writable || echo code-readonly",
            "touch $TASK_DIR/probe && echo taskdir-writable",
            "grep CapEff /proc/self/status",
            "grep NoNewPrivs /proc/self/status",
            "cat /sys/class/net/*/operstate 2>/dev/null | wc -l | sed 's/^/interfaces:/'",
            "ls /sys/class/net",
            "grep -c localhost /etc/hosts | sed 's/^/hosts:/'",
            "ls /var/run/docker.sock 2>/dev/null || echo no-docker-socket",
            "cat /sys/fs/cgroup/pids/pids.max 2>/dev/null | sed 's/^/pids:/'",
        ]
    )
    save_code(
        store, project, CodeSpec(name="probe", stack="busybox", command="sh probe.sh"), {"probe.sh": script}
    )
    start_runner()
    done = wait_for(store, queue(store, project, "probe").id)
    log = store.read_log(done.id).decode()
    assert done.status is TaskStatus.COMPLETE, log
    for expected in (
        "root-readonly",
        "tmp-writable",
        "code-readonly",
        "taskdir-writable",
        "CapEff:\t0000000000000000",
        "NoNewPrivs:\t1",
        "hosts:",
        "no-docker-socket",
        "pids:256",
    ):
        assert expected in log, (expected, log)
    interfaces = log.split("ls /sys/class/net")[-1]
    assert "eth0" not in log, log
    assert "lo" in interfaces


def test_legacy_runtime_upload_gets_arguments(store: Store, project: str, start_runner: StartRunner) -> None:
    save_code(
        store,
        project,
        CodeSpec(name="legacy", runtime="sh", file_name="run.sh", config="c"),
        {"run.sh": 'echo "args: $*"'},
    )
    start_runner()
    task = queue(store, project, "legacy", payload="p")
    done = wait_for(store, task.id)
    log = store.read_log(task.id).decode()
    assert done.status is TaskStatus.COMPLETE, log
    assert (
        f"args: -payload /mnt/task/payload.json -config /mnt/task/config.json -id {task.id} -d /mnt/task"
        in log
    )


def test_many_tasks_run_concurrently_and_leave_nothing(
    store: Store, project: str, start_runner: StartRunner, engine: DockerEngine, settings: Settings
) -> None:
    script = "until [ -e /mnt/code/release ]; do sleep 0.1; done"
    save_code(
        store, project, CodeSpec(name="held", stack="busybox", command="sh held.sh"), {"held.sh": script}
    )
    start_runner()
    tasks = [queue(store, project, "held") for _ in range(8)]
    # every slot (4) runs a task at once, and the others wait for a slot
    deadline = time.monotonic() + 60
    while (statuses := [store.load_task(t.id).status for t in tasks]).count(TaskStatus.RUNNING) < 4:
        assert time.monotonic() < deadline, statuses
        time.sleep(0.05)
    assert statuses.count(TaskStatus.QUEUED) == 4, statuses
    for code_dir in settings.code_cache_dir.iterdir():
        (code_dir / "release").touch()
    for task in tasks:
        assert wait_for(store, task.id).status is TaskStatus.COMPLETE
    assert _containers_of(engine, settings) == []
    assert left_after(lambda: [str(d) for d in settings.task_dirs.iterdir()]) == []


def test_container_killed_from_outside_is_killed(
    store: Store, project: str, start_runner: StartRunner, engine: DockerEngine, settings: Settings
) -> None:
    save_code(store, project, CodeSpec(name="victim", stack="busybox", command="sh -c 'echo up; sleep 300'"))
    start_runner()
    task = queue(store, project, "victim")
    wait_for(store, task.id, {"running"})
    (container,) = [c for c in engine.list_labelled() if c.labels.get("dockworker.task") == task.id]
    engine.kill(container.id)  # as an operator's `docker kill` would
    done = wait_for(store, task.id, timeout=15)
    assert done.status is TaskStatus.KILLED
    assert done.exit_code == 137
    assert done.msg == "killed by signal 9 from outside the task (an operator or the host)"
    assert _containers_of(engine, settings) == []


def test_the_event_history_tells_the_whole_story(
    store: Store, project: str, start_runner: StartRunner
) -> None:
    save_code(store, project, CodeSpec(name="story", stack="busybox", command="sh -c 'exit 4'", retries=1))
    save_code(store, project, CodeSpec(name="story-ok", stack="busybox", command="true"))
    start_runner()
    task = queue(store, project, "story")
    wait_for(store, task.id)
    events = [(e.kind, e.detail) for e in store.list_events(task.id)]
    kinds = [kind for kind, _ in events]
    assert kinds[:4] == ["queued", "claimed", "container_created", "started"]
    assert ("error", "exit code 4") in events
    complete = queue(store, project, "story-ok")
    assert kinds[-1] == "retried"
    wait_for(store, complete.id)
    assert ("complete", "container exited with code 0") in [
        (e.kind, e.detail) for e in store.list_events(complete.id)
    ]


def test_each_log_is_its_output_once_on_a_busy_host(
    store: Store, project: str, start_runner: StartRunner, settings: Settings
) -> None:
    """Many short tasks writing at once while other processes keep every core busy: every log
    is exactly what its task wrote, once, in order (CI once saw a task's log doubled under
    load, when the Docker adapter attached with the engine's log replay)."""
    script = 'for i in 1 2 3 4 5; do echo "$TASK_ID line $i"; done; echo "$TASK_ID err" >&2'
    save_code(
        store, project, CodeSpec(name="short", stack="busybox", command="sh run.sh"), {"run.sh": script}
    )
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 2)]
    try:
        start_runner()  # four slots
        tasks = [queue(store, project, "short") for _ in range(24)]
        for task in tasks:
            done = wait_for(store, task.id, timeout=120)
            assert done.status is TaskStatus.COMPLETE, done.msg
            expected = "".join(f"{task.id} line {i}\n" for i in range(1, 6)) + f"{task.id} err\n"
            assert store.read_log(task.id).decode() == expected
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
