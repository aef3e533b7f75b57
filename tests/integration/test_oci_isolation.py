"""Every item of the sandbox, checked from inside a real task run by the runner on the OCI
backend, on crun and on runc. (Network probes stay on loopback.)"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from dockworker.engine.oci import OciEngine
from dockworker.models import CodeSpec
from dockworker.names import TASK_LABEL
from dockworker.settings import Limits, Settings
from dockworker.states import TaskStatus
from dockworker.store import Store
from tests.helpers import queue, save_code, wait_for

from . import oci_fixtures, test_hostile_tasks

# the OCI fixtures, on crun and on runc
runtime = oci_fixtures.runtime
oci_root = oci_fixtures.oci_root
oci_engine = oci_fixtures.oci_engine
start_oci_runner = oci_fixtures.start_oci_runner
# the hostile-task suite's project (with its "ok" package) and helpers
project = test_hostile_tasks.project
run = test_hostile_tasks.run
others_still_run = test_hostile_tasks.others_still_run

pytestmark = pytest.mark.docker


@pytest.fixture
def host_listener() -> Iterator[int]:
    """A port open on the host's loopback, which no task may reach."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    yield server.getsockname()[1]
    server.close()


def test_the_sandbox_from_inside(
    store: Store, project: str, start_oci_runner: oci_fixtures.StartOciRunner, host_listener: int
) -> None:
    start_oci_runner()
    script = "\n".join(
        [
            "grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp):' /proc/self/status",
            "echo ids:$(id -u):$(id -g)",
            "touch /probe 2>/dev/null && echo root-writable || echo root-readonly",
            "touch /tmp/probe && echo tmp-writable",
            "touch /mnt/code/probe 2>/dev/null && echo code-writable || echo code-readonly",
            "touch $TASK_DIR/probe && echo taskdir-writable",
            "echo tamper > $PAYLOAD_FILE 2>/dev/null || echo payload-read-only",
            "echo nets:$(ls /sys/class/net)",
            "echo routes:$(wc -l < /proc/net/route)",
            f"nc -w 1 127.0.0.1 {host_listener} </dev/null && echo reached-host || echo host-unreachable",
            "nc -l -p 9999 -e echo pong & sleep 0.2; nc -w 1 127.0.0.1 9999 </dev/null",
            "grep -c localhost /etc/hosts | sed 's/^/hosts:/'",
            # masked: empty where the host's are not (/proc/kcore is not there on every kernel)
            "echo timer_list:$(wc -c < /proc/timer_list)",
            "echo acpi:$(ls -A /proc/acpi | wc -l)",
            "echo firmware:$(ls -A /sys/firmware | wc -l)",
            "echo 1 >/proc/sys/kernel/ns_last_pid 2>/dev/null && echo procsys-writable || echo procsys-ro",
            "cat /proc/1/cmdline | tr '\\0' ' ' | sed 's/^/pid1:/'",
            "ls /var/run/docker.sock /run/docker.sock 2>&1 | grep -c 'No such file' | sed 's/^/no-socket:/'",
            "cat /etc/shadow 2>&1 | head -1 | sed 's/^/shadow:/'",
            "mount -t tmpfs none /mnt 2>/dev/null && echo mount-worked || echo mount-refused",
            "mknod $TASK_DIR/dev c 1 3 2>/dev/null && echo mknod-worked || echo mknod-refused",
            "cp /bin/busybox $TASK_DIR/busybox && chmod u+s $TASK_DIR/busybox",
            "echo setuid-uid:$($TASK_DIR/busybox id -u)",
            "echo pids:$(cat /sys/fs/cgroup/pids/pids.max)",
            "echo cpu:$(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us):$(cat /sys/fs/cgroup/cpu/cpu.cfs_period_us)",
            "echo hostname:$(hostname | wc -c)",
        ]
    )
    done = run(store, project, "inside", script, cpus=0.5)
    log = store.read_log(done.id).decode()
    assert done.status is TaskStatus.COMPLETE, log
    for caps in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert f"{caps}:\t0000000000000000" in log, log
    for expected in (
        "NoNewPrivs:\t1",
        "Seccomp:\t2",
        "ids:1000:1000",
        "root-readonly",
        "tmp-writable",
        "code-readonly",
        "taskdir-writable",
        "payload-read-only",
        "nets:lo\n",
        "routes:1\n",  # the header line only: no route at all
        "host-unreachable",
        "pong",
        "hosts:",
        "timer_list:0\n",
        "acpi:0\n",
        "firmware:0\n",
        "procsys-ro",
        "pid1:/sbin/docker-init -- sh run.sh",
        "no-socket:2",
        "shadow:cat: can't open '/etc/shadow'",
        "mount-refused",
        "mknod-refused",
        "setuid-uid:1000",
        "pids:256",
        "cpu:50000:100000",
        "hostname:13\n",  # 12 characters and the newline, as Docker names its containers' hosts
    ):
        assert expected in log, (expected, log)
    assert "reached-host" not in log


def test_memory_bomb_is_reported_as_out_of_memory(
    store: Store, project: str, start_oci_runner: oci_fixtures.StartOciRunner
) -> None:
    start_oci_runner()
    done = run(
        store, project, "bomb", "x=$(head -c 300000000 /dev/zero | tr '\\0' a)\necho survived", memory_mb=48
    )
    assert done.status is TaskStatus.ERROR and (done.msg or "").startswith("out of memory"), done.msg
    assert "48 MB" in (done.msg or "")
    assert b"survived" not in store.read_log(done.id)
    others_still_run(store, project)


def test_memory_within_the_limit_is_not_an_oom(
    store: Store, project: str, start_oci_runner: oci_fixtures.StartOciRunner
) -> None:
    start_oci_runner()
    done = run(
        store, project, "fits", "x=$(head -c 20000000 /dev/zero | tr '\\0' a)\necho survived", memory_mb=64
    )
    assert done.status is TaskStatus.COMPLETE, done.msg
    assert store.read_log(done.id) == b"survived\n"


def test_fork_bomb_is_held_by_the_pids_limit(
    store: Store, project: str, start_oci_runner: oci_fixtures.StartOciRunner
) -> None:
    start_oci_runner()
    script = "i=0; while [ $i -lt 2000 ]; do sleep 30 & i=$((i+1)); done; echo spawned-all"
    done = run(store, project, "forks", script, timeout=20, pids=64)
    assert "spawned-all" not in store.read_log(done.id).decode()
    assert done.status in (TaskStatus.ERROR, TaskStatus.TIMEOUT)
    others_still_run(store, project)


def test_tmpfs_sizes_hold(
    store: Store, project: str, start_oci_runner: oci_fixtures.StartOciRunner, settings: Settings
) -> None:
    start_oci_runner(settings.replace(limits=Limits(memory_mb=256, tmp_mb=32, task_dir_mb=16)))
    script = "\n".join(
        [
            "dd if=/dev/zero of=/tmp/big bs=1M count=100 2>&1 | grep -ci space | sed 's/^/tmp-full:/'",
            "df -m /tmp | tail -1 | awk '{print \"tmp-size:\" $2}'",
            "dd if=/dev/zero of=$TASK_DIR/big bs=1M count=100 2>&1 | grep -ci space | sed 's/^/dir-full:/'",
            "df -m $TASK_DIR | tail -1 | awk '{print \"dir-size:\" $2}'",
        ]
    )
    done = run(store, project, "fill", script)
    log = store.read_log(done.id).decode()
    for expected in ("tmp-full:1", "tmp-size:32", "dir-full:1", "dir-size:16"):
        assert expected in log, (expected, log)


def test_a_task_ignoring_sigterm_is_killed_at_its_timeout(
    store: Store, project: str, start_oci_runner: oci_fixtures.StartOciRunner
) -> None:
    start_oci_runner()
    done = run(
        store, project, "stubborn", "trap '' TERM INT\necho armed\nwhile :; do sleep 1; done", timeout=2
    )
    assert done.status is TaskStatus.TIMEOUT and done.msg == "timed out after 2 s"
    assert done.duration_ms is not None and 1900 <= done.duration_ms < 6000
    assert store.read_log(done.id) == b"armed\n"
    others_still_run(store, project)


def test_cancel_kills_within_a_second(
    store: Store, project: str, start_oci_runner: oci_fixtures.StartOciRunner
) -> None:
    save_code(
        store, project, CodeSpec(name="long", stack="busybox", command="sh -c 'echo started; sleep 300'")
    )
    start_oci_runner()
    task = queue(store, project, "long")
    wait_for(store, task.id, {"running"})
    requested = time.monotonic()
    store.request_cancel(project, task.id)
    done = wait_for(store, task.id, timeout=10)
    assert time.monotonic() - requested < 1.5
    assert done.status is TaskStatus.CANCELLED and done.msg == "cancelled by user"
    assert "started" in store.read_log(task.id).decode()


def test_log_is_capped_with_a_marker_and_the_flood_keeps_running(
    store: Store, project: str, start_oci_runner: oci_fixtures.StartOciRunner, settings: Settings
) -> None:
    start_oci_runner(settings.replace(limits=Limits(memory_mb=128, log_bytes=200_000)))
    save_code(store, project, CodeSpec(name="flood", stack="busybox", command="yes flooding-the-log"))
    done = wait_for(store, queue(store, project, "flood", timeout=3).id, timeout=30)
    log = store.read_log(done.id)
    assert done.status is TaskStatus.TIMEOUT  # writing on past the cap: the task was not blocked
    assert log.endswith(b"[dockworker: log truncated at 200000 bytes]\n")
    assert len(log) < 200_100
    others_still_run(store, project)


def test_output_keeps_the_order_of_stdout_and_stderr(
    store: Store, project: str, start_oci_runner: oci_fixtures.StartOciRunner, runtime: str
) -> None:
    start_oci_runner()
    done = run(store, project, "order", "for i in 1 2 3 4 5; do echo out$i; echo err$i >&2; done")
    log = store.read_log(done.id)
    if runtime == "crun":  # one pipe for both streams, written to in order
        assert log == b"".join(f"out{i}\nerr{i}\n".encode() for i in range(1, 6))
    else:  # runc copies each stream through a pipe of its own: each keeps its order
        lines = log.decode().split()
        assert [x for x in lines if x.startswith("out")] == [f"out{i}" for i in range(1, 6)]
        assert [x for x in lines if x.startswith("err")] == [f"err{i}" for i in range(1, 6)]


def test_sigterm_from_outside_ends_the_task_with_143(
    store: Store, project: str, start_oci_runner: oci_fixtures.StartOciRunner, oci_engine: OciEngine
) -> None:
    save_code(store, project, CodeSpec(name="victim", stack="busybox", command="sh -c 'echo up; sleep 300'"))
    start_oci_runner()
    task = queue(store, project, "victim")
    wait_for(store, task.id, {"running"})
    (container,) = [c for c in oci_engine.list_labelled() if c.labels.get(TASK_LABEL) == task.id]
    oci_engine.signal(container.id, "TERM")  # as an operator's `docker stop` would
    done = wait_for(store, task.id, timeout=15)
    assert done.status is TaskStatus.KILLED and done.exit_code == 143
    assert done.msg == "killed by signal 15 from outside the task (an operator or the host)"


def test_contract_and_exit_codes(
    store: Store, project: str, start_oci_runner: oci_fixtures.StartOciRunner
) -> None:
    script = "\n".join(
        [
            'echo "id=$TASK_ID dir=$TASK_DIR home=$HOME"',
            'cat "$PAYLOAD_FILE"; echo',
            'cat "$CONFIG_FILE"; echo',
            "exit 3",
        ]
    )
    save_code(
        store,
        project,
        CodeSpec(
            name="contract", stack="busybox", command="sh main.sh", config="cfg", env_vars={"GREETING": "hi"}
        ),
        {"main.sh": script + "\n"},
    )
    save_code(store, project, CodeSpec(name="nocmd", stack="busybox", command="no-such-binary --flag"))
    start_oci_runner()
    task = queue(store, project, "contract", payload='{"n": 1}')
    done = wait_for(store, task.id)
    assert done.status is TaskStatus.ERROR and done.exit_code == 3
    assert store.read_log(task.id).decode() == f'id={task.id} dir=/mnt/task home=/mnt/task\n{{"n": 1}}\ncfg\n'
    missing = wait_for(store, queue(store, project, "nocmd").id)
    assert missing.status is TaskStatus.ERROR
    assert (missing.msg or "").startswith("exit code 127 (command not found): ") and "no-such-binary" in (
        missing.msg or ""
    )


def test_a_missing_image_fails_cleanly(
    store: Store, project: str, start_oci_runner: oci_fixtures.StartOciRunner
) -> None:
    save_code(store, project, CodeSpec(name="ghost", image="dockworker-test/missing:1", command="true"))
    start_oci_runner()
    done = wait_for(store, queue(store, project, "ghost").id)
    assert done.status is TaskStatus.ERROR and "image not found" in (done.msg or "")
    assert done.infra_attempts == 0


def test_the_python_stack_runs(
    store: Store, project: str, start_oci_runner: oci_fixtures.StartOciRunner, python_stack: None
) -> None:
    save_code(
        store,
        project,
        CodeSpec(name="py", stack="python", command="python3 main.py"),
        {"main.py": "import json, os, sys\nprint(json.dumps([os.getuid(), sys.version_info[:2]]))"},
    )
    start_oci_runner()
    done = wait_for(store, queue(store, project, "py").id)
    assert done.status is TaskStatus.COMPLETE, done.msg
    assert store.read_log(done.id) == b"[1000, [3, 11]]\n"
