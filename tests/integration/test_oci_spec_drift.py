"""The OCI backend's spec for a task container is the one the Docker engine generates for the
same ``ContainerSpec`` through the Docker adapter: same process, mounts, namespaces, seccomp
profile, masked and read-only paths, devices and limits. Only what is per container by nature
differs (the hostname, the /etc/hostname file, the cgroup path), and where the limits are
written (cgroups.py): with runc, in the spec, the memory limit enforced on a parent cgroup; with
crun on this cgroup v1 host, by dockworker into the container's cgroup, read back here."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from dockworker.engine import Bind, ContainerSpec, DockerEngine
from dockworker.engine.cgroupfs import CgroupLayout
from dockworker.engine.oci import OciEngine
from dockworker.engine.oci.cgroups import MEMORY_MARGIN, RUNTIME_DEVICE_RULES, SCOPE_DIR, device_rule
from dockworker.engine.oci.policy import DOCKER_BUNDLES
from dockworker.models import CodeSpec
from dockworker.runner.contract import TaskFiles, container_spec, ensure_hosts_file, write_task_files
from dockworker.settings import Settings
from tests.conftest import BUSYBOX_IMAGE

from . import oci_fixtures

runtime = oci_fixtures.runtime
oci_root = oci_fixtures.oci_root
oci_engine = oci_fixtures.oci_engine

pytestmark = pytest.mark.docker


def docker_spec_of(engine: DockerEngine, spec: ContainerSpec) -> dict[str, Any]:
    container_id = engine.create(spec)
    try:
        engine.start(container_id)
        data: dict[str, Any] = json.loads((DOCKER_BUNDLES / container_id / "config.json").read_text())
        return data
    finally:
        engine.remove(container_id)


def oci_spec_of(oci: OciEngine, root: Path, spec: ContainerSpec) -> dict[str, Any]:
    """The bundle's spec; where dockworker placed the container itself, with the limits it
    wrote into the container's cgroup (read from the running container's) as the spec's
    ``resources``."""
    container_id = oci.create(spec)
    try:
        data: dict[str, Any] = json.loads((root / "containers" / container_id / "config.json").read_text())
        if "cgroupsPath" not in data["linux"]:
            oci.start(container_id)
            data["linux"]["resources"] = placed_limits(
                Path(SCOPE_DIR) / OciEngine.scope_of(root) / container_id
            )
        return data
    finally:
        oci.remove(container_id)


def placed_limits(relative: Path) -> dict[str, Any]:
    layout = CgroupLayout.detect()

    def read(controller: str, name: str) -> str:
        hierarchy = layout.v1_of(controller)
        assert hierarchy is not None, controller
        return (hierarchy / relative / name).read_text().strip()

    return {
        "memory": {
            "limit": int(read("memory", "memory.limit_in_bytes")),
            "swap": int(read("memory", "memory.memsw.limit_in_bytes")),
        },
        "cpu": {
            "quota": int(read("cpu", "cpu.cfs_quota_us")),
            "period": int(read("cpu", "cpu.cfs_period_us")),
        },
        "pids": {"limit": int(read("pids", "pids.max"))},
        "devices.list": read("devices", "devices.list").splitlines(),
    }


def task_like_spec(tmp_path: Path, settings: Settings, **changes: Any) -> ContainerSpec:
    """What the runner makes for a task with a config and a code package, kept running."""
    task_dir, code_dir = tmp_path / "task", tmp_path / "code"
    code_dir.mkdir()
    write_task_files(task_dir, '{"n": 1}', "cfg", 1000, 1000)
    files = TaskFiles(task_dir=task_dir, code_dir=code_dir, hosts_file=ensure_hosts_file(settings.data_dir))
    spec = container_spec(
        spec=CodeSpec(name="drift", stack="busybox", command="sleep 30", config="cfg", env_vars={"A": "1"}),
        task_id="drift-task",
        files=files,
        settings=settings,
        runner_id="drift-runner",
        installation_id="drift-installation",
    )
    return dataclasses.replace(spec, **changes)


def mounts(config: dict[str, Any]) -> list[tuple[str, str, str, tuple[str, ...]]]:
    found = []
    for mount in config["mounts"]:
        source = "<per container>" if mount["destination"] == "/etc/hostname" else mount["source"]
        found.append((mount["destination"], mount["type"], source, tuple(mount.get("options") or ())))
    return found


def oci_engine_policy_mounts(config: dict[str, Any]) -> list[dict[str, Any]]:
    """The mounts up to the init binary's (the engine's own and the init)."""
    init = config["process"]["args"][0]
    all_mounts: list[dict[str, Any]] = config["mounts"]
    targets = [m["destination"] for m in all_mounts]
    return all_mounts[: targets.index(init) + 1]


def environment(config: dict[str, Any]) -> dict[str, str]:
    pairs = dict(entry.split("=", 1) for entry in config["process"]["env"])
    assert len(pairs.pop("HOSTNAME")) == 12
    return pairs


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"user": "worker"},
        {"binds_extra": Bind(source="/tmp", target="/mnt/scratch", read_only=False)},
        {"tmpfs_extra": ("/mnt/bare", "")},
        {"read_only_root": False, "cpus": 0.25, "pids": 32, "memory_bytes": 96 * 1024 * 1024},
    ],
    ids=["task", "named-user", "rw-bind", "bare-tmpfs", "limits"],
)
def test_the_spec_is_the_engines_own(
    tmp_path: Path,
    settings: Settings,
    engine: DockerEngine,
    oci_engine: OciEngine,
    oci_root: Path,
    changes: dict[str, Any],
) -> None:
    base = task_like_spec(tmp_path, settings)
    extra_bind = changes.pop("binds_extra", None)
    extra_tmpfs = changes.pop("tmpfs_extra", None)
    if extra_bind is not None:
        changes["binds"] = (*base.binds, extra_bind)
    if extra_tmpfs is not None:
        changes["tmpfs"] = {**base.tmpfs, extra_tmpfs[0]: extra_tmpfs[1]}
    spec = dataclasses.replace(base, **changes)
    assert spec.image == BUSYBOX_IMAGE
    docker, ours = docker_spec_of(engine, spec), oci_spec_of(oci_engine, oci_root, spec)

    for key in (
        "user",
        "args",
        "cwd",
        "capabilities",
        "noNewPrivileges",
        "oomScoreAdj",
        "rlimits",
        "terminal",
    ):
        assert ours["process"].get(key) == docker["process"].get(key), key
    assert environment(ours) == environment(docker)
    assert ours["root"].get("readonly", False) == docker["root"].get("readonly", False) == spec.read_only_root
    assert len(ours["hostname"]) == len(docker["hostname"]) == 12
    # the engine's own mounts and the init first, in the engine's order; then the task's, in an
    # order where a mount inside another comes after it (the order of siblings does not matter)
    system = len(oci_engine_policy_mounts(ours))
    assert mounts(ours)[:system] == mounts(docker)[:system]
    assert sorted(mounts(ours)[system:]) == sorted(mounts(docker)[system:])
    depths = [len(Path(m[0]).parts) for m in mounts(ours)[system:]]
    assert depths == sorted(depths)
    for key in ("namespaces", "maskedPaths", "readonlyPaths", "seccomp", "sysctl", "devices"):
        assert ours["linux"].get(key) == docker["linux"].get(key), key
    assert {"type": "network"} in ours["linux"]["namespaces"]  # a new, empty one
    assert "/proc/kcore" in ours["linux"]["maskedPaths"]
    resources, expected = ours["linux"]["resources"], docker["linux"]["resources"]
    assert resources["pids"] == expected["pids"]
    assert (resources["cpu"]["quota"], resources["cpu"]["period"]) == (
        expected["cpu"]["quota"],
        expected["cpu"]["period"],
    )
    if "cgroupsPath" in ours["linux"]:  # the runtime writes the limits
        assert resources["devices"] == expected["devices"]
        # the enforced limit (and swap = memory) is on the parent cgroup; the container's own
        # cgroup allows the margin more
        assert (
            resources["memory"]["limit"] - MEMORY_MARGIN == expected["memory"]["limit"] == spec.memory_bytes
        )
        assert resources["memory"]["swap"] - MEMORY_MARGIN == expected["memory"]["swap"] == spec.memory_bytes
    else:  # dockworker wrote them: what the kernel holds
        assert resources["memory"] == {"limit": spec.memory_bytes, "swap": spec.memory_bytes}
        assert expected["memory"]["limit"] == expected["memory"]["swap"] == spec.memory_bytes
        allowed = {device_rule(rule)[1] for rule in expected["devices"] if rule.get("allow")}
        assert set(resources["devices.list"]) == allowed | set(RUNTIME_DEVICE_RULES)
        assert "a *:* rwm" not in resources["devices.list"]
    assert {k: v for k, v in ours["annotations"].items() if not k.startswith("run.oci.")} == spec.labels


def test_the_engines_memory_limit_is_enforced_where_the_container_runs(
    settings: Settings, tmp_path: Path, oci_engine: OciEngine, oci_root: Path, runtime: str
) -> None:
    spec = task_like_spec(tmp_path, settings, memory_bytes=80 * 1024 * 1024)
    container_id = oci_engine.create(spec)
    try:
        oci_engine.start(container_id)
        layout = CgroupLayout.detect()
        memory = layout.memory_v1
        assert memory is not None, "this check is for cgroup v1 hosts"
        parent = memory / SCOPE_DIR / OciEngine.scope_of(oci_root) / container_id
        assert (parent / "memory.limit_in_bytes").read_text().strip() == str(spec.memory_bytes)
        assert (parent / "memory.memsw.limit_in_bytes").read_text().strip() == str(spec.memory_bytes)
        if runtime == "runc":  # the runtime's own cgroup, under the parent, allows the margin more
            assert (parent / "task" / "memory.limit_in_bytes").read_text().strip() == str(
                spec.memory_bytes + MEMORY_MARGIN
            )
            return
        # placed by dockworker: the container runs in that cgroup, and crun is moved out of it
        # once the container runs (its pid does not count against the container's limit)
        assert not (parent / "task").exists()
        own = os.readlink("/proc/self/ns/pid")
        deadline = time.monotonic() + 10
        while True:
            pids = (parent / "cgroup.procs").read_text().split()
            outside = [pid for pid in pids if os.readlink(f"/proc/{pid}/ns/pid") == own]
            if (pids and not outside) or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        assert pids and not outside, (pids, outside)
    finally:
        oci_engine.remove(container_id)
