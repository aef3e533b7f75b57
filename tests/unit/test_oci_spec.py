"""The OCI spec of a task container, built from its ContainerSpec, its image and the sandbox
policy (the integration tier compares it with the Docker engine's own spec)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from dockworker.engine import Bind, ContainerSpec
from dockworker.engine.oci.cgroups import MEMORY_MARGIN
from dockworker.engine.oci.images import ImageConfig, PreparedImage
from dockworker.engine.oci.policy import InitBinary, SandboxPolicy
from dockworker.engine.oci.spec import (
    DEFAULT_PATH,
    bind_options,
    command,
    environment,
    oci_config,
    resolve_user,
    tmpfs_options,
)
from dockworker.errors import TaskSetupError

POLICY = SandboxPolicy(
    engine_version="test",
    process={"capabilities": {}, "noNewPrivileges": True},
    linux={"namespaces": [{"type": "network"}], "maskedPaths": ["/proc/kcore"], "seccomp": {"x": 1}},
    device_rules=[{"allow": False, "access": "rwm"}],
    mounts=[{"destination": "/proc", "type": "proc", "source": "proc"}],
    init=InitBinary(source="/usr/bin/docker-init", target="/sbin/docker-init"),
)


def image(tmp_path: Path, files: dict[str, str] | None = None, **config: object) -> PreparedImage:
    layer = tmp_path / "layers" / ("a" * 64)
    for name, content in (files or {}).items():
        (layer / name).parent.mkdir(parents=True, exist_ok=True)
        (layer / name).write_text(content)
    layer.mkdir(parents=True, exist_ok=True)
    return PreparedImage(
        id="sha256:" + "b" * 64,
        config=ImageConfig(**config),  # type: ignore[arg-type]
        layers=("a" * 64,),
        layer_root=tmp_path / "layers",
    )


def test_tmpfs_options_are_dockers() -> None:
    # the engine's own answers for the runner's two tmpfs mounts
    assert tmpfs_options("rw,nosuid,nodev,size=64m,mode=1777") == [
        "noexec",
        "rprivate",
        "rw",
        "nosuid",
        "nodev",
        "size=64m",
        "mode=1777",
    ]
    assert tmpfs_options("rw,exec,nosuid,nodev,size=256m") == [
        "rprivate",
        "rw",
        "exec",
        "nosuid",
        "nodev",
        "size=256m",
    ]
    assert tmpfs_options("") == ["noexec", "nosuid", "nodev", "rprivate"]
    assert bind_options(True) == ["rbind", "ro", "rprivate"] and bind_options(False) == ["rbind", "rprivate"]


def test_command_is_the_entrypoint_then_the_task_or_image_command(tmp_path: Path) -> None:
    with_entrypoint = image(tmp_path, entrypoint=("/entry",), cmd=("default",))
    assert command(ContainerSpec(image="i", command=["task"]), with_entrypoint) == ["/entry", "task"]
    assert command(ContainerSpec(image="i", command=[]), with_entrypoint) == ["/entry", "default"]
    with pytest.raises(TaskSetupError, match="no command"):
        command(ContainerSpec(image="i", command=[]), image(tmp_path))


def test_environment_layers_the_task_over_the_image(tmp_path: Path) -> None:
    prepared = image(tmp_path, env=("LANG=C.UTF-8", "A=image"))
    env = environment(
        ContainerSpec(image="i", command=["x"], env={"A": "task", "HOSTNAME": "no"}), prepared, "h"
    )
    assert env == [f"PATH={DEFAULT_PATH}", "HOSTNAME=h", "LANG=C.UTF-8", "A=task"]


def test_users_are_resolved_in_the_images_files(tmp_path: Path) -> None:
    prepared = image(
        tmp_path,
        {
            "etc/passwd": "root:x:0:0::/root:/bin/sh\nworker:x:1000:1000::/home:/bin/sh\n",
            "etc/group": "root:x:0:\nworker:x:1000:\nextra:x:2000:worker,other\n",
        },
    )
    assert resolve_user("1000:1000", prepared) == {"uid": 1000, "gid": 1000, "additionalGids": [2000]}
    assert resolve_user("worker", prepared) == {"uid": 1000, "gid": 1000, "additionalGids": [2000]}
    assert resolve_user("root:extra", prepared) == {"uid": 0, "gid": 2000, "additionalGids": [2000]}
    assert resolve_user("4242", prepared) == {"uid": 4242, "gid": 0, "additionalGids": [0]}
    with pytest.raises(TaskSetupError, match="unable to find user nobody"):
        resolve_user("nobody", prepared)
    with pytest.raises(TaskSetupError, match="unable to find group staff"):
        resolve_user("1000:staff", prepared)


def test_a_file_deleted_by_an_upper_layer_is_not_read(tmp_path: Path) -> None:
    lower, upper = "c" * 64, "d" * 64
    for layer in (lower, upper):
        (tmp_path / layer / "etc").mkdir(parents=True)
    (tmp_path / lower / "etc" / "passwd").write_text("old")
    (tmp_path / lower / "etc" / "group").write_text("lower")
    if os.geteuid() == 0:
        os.mknod(tmp_path / upper / "etc" / "passwd", 0o600 | 0o020000, os.makedev(0, 0))
    else:
        (tmp_path / upper / "etc" / "passwd").symlink_to("/nowhere")
    prepared = PreparedImage(
        id="sha256:" + "e" * 64, config=ImageConfig(), layers=(lower, upper), layer_root=tmp_path
    )
    assert prepared.read_file("/etc/passwd") is None
    assert prepared.read_file("/etc/group") == b"lower"


def test_the_config_wraps_the_command_in_the_init_and_orders_mounts(tmp_path: Path) -> None:
    spec = ContainerSpec(
        image="i",
        command=["sh", "run.sh"],
        labels={"dockworker.task": "t"},
        binds=(
            Bind(source="/host/payload", target="/mnt/task/payload.json"),
            Bind(source="/host/code", target="/mnt/code"),
        ),
        tmpfs={"/mnt/task": "rw,exec"},
        user="1000:1000",
        memory_bytes=64 << 20,
        cpus=0.5,
        pids=32,
    )

    def config_for(cgroups_path: str | None) -> dict[str, Any]:
        return oci_config(
            spec=spec,
            image=image(tmp_path),
            policy=POLICY,
            container_id="f" * 64,
            hostname_file="/c/hostname",
            cgroups_path=cgroups_path,
            annotations={"run.oci.seccomp_bpf_data": "AA=="},
        )

    config = config_for("/x/task")
    assert config["process"]["args"] == ["/sbin/docker-init", "--", "sh", "run.sh"]
    assert config["process"]["noNewPrivileges"] is True and config["process"]["capabilities"] == {}
    assert config["hostname"] == "f" * 12 and config["root"] == {"path": "rootfs", "readonly": True}
    targets = [m["destination"] for m in config["mounts"]]
    assert targets[:2] == ["/proc", "/sbin/docker-init"]
    assert targets.index("/mnt/task") < targets.index("/mnt/task/payload.json")
    resources = config["linux"]["resources"]
    assert resources["memory"] == {
        "limit": (64 << 20) + MEMORY_MARGIN,
        "swap": (64 << 20) + MEMORY_MARGIN,
        "disableOOMKiller": False,
    }
    assert resources["cpu"] == {"quota": 50_000, "period": 100_000} and resources["pids"] == {"limit": 32}
    assert config["linux"]["cgroupsPath"] == "/x/task" and config["linux"]["maskedPaths"] == ["/proc/kcore"]
    assert config["annotations"] == {"dockworker.task": "t", "run.oci.seccomp_bpf_data": "AA=="}
    # placed by dockworker (no cgroups path): the runtime is given no cgroup and no limits to
    # write; dockworker writes them into the container's cgroup (cgroups.py)
    placed = config_for(None)
    assert "cgroupsPath" not in placed["linux"] and "resources" not in placed["linux"]
    assert placed["linux"]["maskedPaths"] == ["/proc/kcore"] and placed["process"] == config["process"]


def test_a_container_with_a_network_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TaskSetupError, match="without a network"):
        oci_config(
            spec=ContainerSpec(image="i", command=["x"], network_disabled=False),
            image=image(tmp_path),
            policy=POLICY,
            container_id="f" * 64,
            hostname_file="/h",
            cgroups_path="/x",
        )


def test_the_policy_is_read_from_the_engines_spec() -> None:
    generated = {
        "process": {
            "args": ["/sbin/docker-init", "--", "sleep"],
            "noNewPrivileges": True,
            "capabilities": {},
        },
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/sbin/docker-init", "type": "bind", "source": "/usr/bin/docker-init"},
            {"destination": "/etc/hostname", "type": "bind", "source": "/var/lib/docker/x/hostname"},
        ],
        "linux": {
            "seccomp": {"defaultAction": "SCMP_ACT_ERRNO"},
            "resources": {"devices": [{"allow": False}]},
        },
    }
    policy = SandboxPolicy.from_docker_spec("20.10", generated)
    assert policy.init == InitBinary(source="/usr/bin/docker-init", target="/sbin/docker-init")
    assert [m["destination"] for m in policy.mounts] == ["/proc"]
    assert policy.device_rules == [{"allow": False}] and policy.linux == {
        "seccomp": {"defaultAction": "SCMP_ACT_ERRNO"}
    }
    assert SandboxPolicy.from_json(policy.to_json()) == policy
