"""Hostile tasks, each a real container: the limits and the sandbox hold, and other tasks still
run. (Network probes stay on the container's own loopback: nothing is sent anywhere else.)"""

from __future__ import annotations

import time
from typing import TypedDict, Unpack

import pytest
from fastapi.testclient import TestClient

from dockworker.api import create_app
from dockworker.models import CodeSpec, Task
from dockworker.settings import Limits, Settings
from dockworker.states import TaskStatus
from dockworker.store import Store
from tests.conftest import StartRunner
from tests.helpers import queue, save_code, wait_for

from . import oci_fixtures

pytestmark = pytest.mark.docker

# every test here runs on the Docker engine and on the OCI backend
engine = oci_fixtures.both_backends


@pytest.fixture
def project(store: Store) -> str:
    project = store.create_project("hostile").id
    save_code(store, project, CodeSpec(name="ok", stack="busybox", command="echo fine"))
    return project


class SpecLimits(TypedDict, total=False):
    """The limits a :func:`run` may set on its code (the rest of its :class:`CodeSpec` is fixed)."""

    memory_mb: int | None
    cpus: float | None
    pids: int | None


def run(
    store: Store, project: str, name: str, script: str, timeout: int = 30, **spec: Unpack[SpecLimits]
) -> Task:
    save_code(
        store, project, CodeSpec(name=name, stack="busybox", command="sh run.sh", **spec), {"run.sh": script}
    )
    return wait_for(store, queue(store, project, name, timeout=timeout).id, timeout=timeout + 30)


def others_still_run(store: Store, project: str) -> None:
    done = wait_for(store, queue(store, project, "ok").id, timeout=30)
    assert done.status is TaskStatus.COMPLETE and store.read_log(done.id) == b"fine\n"


def test_cpu_spin_is_held_to_its_quota(
    store: Store, project: str, settings: Settings, start_runner: StartRunner
) -> None:
    start_runner()
    save_code(
        store,
        project,
        CodeSpec(name="spin", stack="busybox", command="sh -c 'while :; do :; done'", cpus=0.5),
    )
    spinners = [queue(store, project, "spin", timeout=6) for _ in range(2)]
    wait_for(store, spinners[0].id, {"running"})
    probe = run(
        store,
        project,
        "quota",
        "cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/cpu/cpu.cfs_period_us",
        cpus=0.5,
    )
    assert store.read_log(probe.id).split() == [b"50000", b"100000"]
    assert probe.start_time is not None and probe.start_time - probe.created_at < 3, (
        "spinners delayed other tasks"
    )
    for spinner in spinners:
        assert wait_for(store, spinner.id, timeout=30).status is TaskStatus.TIMEOUT


def test_log_flood_is_capped_and_the_api_stays_responsive(
    store: Store, project: str, settings: Settings, start_runner: StartRunner
) -> None:
    start_runner(settings.replace(limits=Limits(memory_mb=128, log_bytes=200_000)))
    save_code(store, project, CodeSpec(name="flood", stack="busybox", command="yes flooding-the-log"))
    task = queue(store, project, "flood", timeout=4)
    wait_for(store, task.id, {"running"})
    token, _ = store.create_token(project, "t")
    with TestClient(create_app(settings, store)) as client:
        slowest = 0.0
        while not store.load_task(task.id).status.is_terminal:
            started = time.monotonic()
            response = client.get(f"/2/projects/{project}/tasks", headers={"Authorization": f"OAuth {token}"})
            slowest = max(slowest, time.monotonic() - started)
            assert response.status_code == 200
            time.sleep(0.1)
    log = store.read_log(task.id)
    assert len(log) < 200_100 and log.endswith(b"[dockworker: log truncated at 200000 bytes]\n")
    assert slowest < 1.0, f"the API took {slowest:.2f} s to answer during the flood"
    assert store.load_task(task.id).status is TaskStatus.TIMEOUT
    others_still_run(store, project)


def test_no_network_but_loopback(store: Store, project: str, start_runner: StartRunner) -> None:
    start_runner()
    script = "\n".join(
        [
            "ls /sys/class/net",
            "cat /proc/net/route | wc -l | sed 's/^/routes:/'",
            # the API listens on the host's loopback; the container's own loopback is another one
            "nc -w 1 127.0.0.1 8080 </dev/null && echo reached-host || echo host-unreachable",
            "nc -l -p 9999 -e echo pong & sleep 0.2; nc -w 1 127.0.0.1 9999 </dev/null",
        ]
    )
    done = run(store, project, "net", script)
    log = store.read_log(done.id).decode()
    assert log.split()[0] == "lo" and "eth0" not in log
    assert "routes:1" in log  # the header line only: no route at all
    assert "host-unreachable" in log and "reached-host" not in log
    assert "pong" in log  # loopback inside the container works


def test_host_files_and_the_docker_socket_are_out_of_reach(
    store: Store, project: str, start_runner: StartRunner
) -> None:
    start_runner()
    script = "\n".join(
        [
            "ls /var/run/docker.sock /run/docker.sock 2>&1 | grep -c 'No such file' | sed 's/^/no-socket:/'",
            "cat /etc/shadow 2>&1 | head -1 | sed 's/^/shadow:/'",
            "ls /root 2>&1 | head -1 | sed 's/^/root:/'",
            "cat /proc/1/cmdline | tr '\\0' ' ' | sed 's/^/pid1:/'",
            "mount | grep -c ' / ' | sed 's/^/rootmounts:/'",
        ]
    )
    done = run(store, project, "files", script)
    log = store.read_log(done.id).decode()
    assert "no-socket:2" in log
    assert "shadow:cat: can't open '/etc/shadow'" in log
    assert "pid1:/sbin/docker-init" in log


def test_setuid_and_capability_tricks_have_no_effect(
    store: Store, project: str, start_runner: StartRunner
) -> None:
    start_runner()
    script = "\n".join(
        [
            "id -u | sed 's/^/uid:/'",
            "cp /bin/busybox $TASK_DIR/busybox && chmod u+s $TASK_DIR/busybox",
            "$TASK_DIR/busybox id -u | sed 's/^/setuid-uid:/'",
            "chown 0:0 $TASK_DIR/busybox 2>/dev/null && echo chown-worked || echo chown-refused",
            "mount -t tmpfs none /mnt 2>/dev/null && echo mount-worked || echo mount-refused",
            "mknod $TASK_DIR/dev c 1 3 2>/dev/null && echo mknod-worked || echo mknod-refused",
            "grep -E '^(CapEff|CapPrm|CapBnd|NoNewPrivs)' /proc/self/status",
        ]
    )
    done = run(store, project, "privs", script)
    log = store.read_log(done.id).decode()
    assert "uid:1000" in log and "setuid-uid:1000" in log
    for refused in ("chown-refused", "mount-refused", "mknod-refused"):
        assert refused in log, log
    assert "CapEff:\t0000000000000000" in log and "CapBnd:\t0000000000000000" in log
    assert "NoNewPrivs:\t1" in log


def test_a_task_ignoring_sigterm_is_killed_at_its_timeout(
    store: Store, project: str, start_runner: StartRunner
) -> None:
    start_runner()
    started = time.monotonic()
    done = run(
        store, project, "stubborn", "trap '' TERM INT\necho armed\nwhile :; do sleep 1; done", timeout=2
    )
    assert done.status is TaskStatus.TIMEOUT and done.msg == "timed out after 2 s"
    assert time.monotonic() - started < 15
    assert store.read_log(done.id) == b"armed\n"
    others_still_run(store, project)


def test_filling_tmp_hits_its_size_limit(
    store: Store, project: str, start_runner: StartRunner, settings: Settings
) -> None:
    start_runner()
    script = "dd if=/dev/zero of=/tmp/big bs=1M count=500 2>&1 | grep -i space; df -m /tmp | tail -1"
    done = run(store, project, "fill-tmp", script, memory_mb=256)
    log = store.read_log(done.id).decode()
    assert "No space left on device" in log
    assert f" {settings.limits.tmp_mb} " in log  # df reports the tmpfs size
    others_still_run(store, project)


def test_memory_bomb_is_reported_and_others_run(
    store: Store, project: str, start_runner: StartRunner
) -> None:
    start_runner()
    done = run(
        store, project, "bomb", "x=$(head -c 300000000 /dev/zero | tr '\\0' a)\necho survived", memory_mb=48
    )
    assert done.status is TaskStatus.ERROR and (done.msg or "").startswith("out of memory")
    assert b"survived" not in store.read_log(done.id)
    others_still_run(store, project)


def test_filling_the_task_dir_hits_its_size_limit(
    store: Store, project: str, start_runner: StartRunner, settings: Settings
) -> None:
    small = settings.replace(limits=Limits(memory_mb=128, task_dir_mb=16))
    start_runner(small)
    script = "\n".join(
        [
            "dd if=/dev/zero of=$TASK_DIR/big bs=1M count=100 2>&1 | grep -i space",
            "df -m $TASK_DIR | tail -1",
            "echo tamper > $PAYLOAD_FILE 2>/dev/null || echo payload-read-only",
        ]
    )
    done = run(store, project, "fill-dir", script)
    log = store.read_log(done.id).decode()
    assert "No space left on device" in log
    assert " 16 " in log
    assert "payload-read-only" in log
    others_still_run(store, project)
