"""The OCI runtime spec (a bundle's config.json) of one task container: the task's own parts
(command, environment, user, mounts, limits) from its ``ContainerSpec`` and its image, the rest
from the sandbox policy the Docker engine generates (see ``policy.py``). Where Docker's meaning
of a ``ContainerSpec`` field is not in the policy (tmpfs options, bind options, the order of
mounts, the environment Docker adds), it is reproduced here and checked against the engine's
own spec by the integration tests."""

from __future__ import annotations

import posixpath
from typing import Any

from ...errors import TaskSetupError
from ..types import ContainerSpec
from .cgroups import MEMORY_MARGIN
from .images import PreparedImage
from .policy import SandboxPolicy

OCI_VERSION = "1.0.2-dev"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CPU_PERIOD_US = 100_000
HOSTNAME_LENGTH = 12
# Docker's defaults for a tmpfs mount; an option of the task's naming the opposite wins.
_TMPFS_DEFAULTS = (("noexec", "exec"), ("nosuid", "suid"), ("nodev", "dev"))


def tmpfs_options(options: str) -> list[str]:
    given = [option for option in options.split(",") if option]
    defaults = [
        default for default, opposite in _TMPFS_DEFAULTS if default not in given and opposite not in given
    ]
    return [*defaults, "rprivate", *given]


def bind_options(read_only: bool) -> list[str]:
    return ["rbind", "ro", "rprivate"] if read_only else ["rbind", "rprivate"]


def command(spec: ContainerSpec, image: PreparedImage) -> list[str]:
    """As Docker: the image's entrypoint, then the task's command or else the image's."""
    args = [*image.config.entrypoint, *(spec.command or image.config.cmd)]
    if not args:
        raise TaskSetupError("no command given and the image has none")
    return args


def environment(spec: ContainerSpec, image: PreparedImage, hostname: str) -> list[str]:
    """The image's variables, the task's over them, PATH and HOSTNAME as Docker sets them."""
    merged: dict[str, str] = {}
    for entry in image.config.env:
        name, _, value = entry.partition("=")
        merged[name] = value
    merged.update(spec.env)
    path = merged.pop("PATH", DEFAULT_PATH)
    merged.pop("HOSTNAME", None)
    return [f"PATH={path}", f"HOSTNAME={hostname}", *(f"{k}={v}" for k, v in merged.items())]


def _passwd_entries(image: PreparedImage, path: str) -> list[list[str]]:
    data = image.read_file(path)
    if data is None:
        return []
    return [line.split(":") for line in data.decode(errors="replace").splitlines() if line and line[0] != "#"]


def resolve_user(user: str, image: PreparedImage) -> dict[str, Any]:
    """``uid[:gid]`` or names, looked up in the image's /etc/passwd and /etc/group as Docker
    does; the supplementary groups are the groups naming the user, else its primary group."""
    name_part, _, group_part = (user or "0").partition(":")
    passwd = [e for e in _passwd_entries(image, "/etc/passwd") if len(e) >= 4]
    groups = [e for e in _passwd_entries(image, "/etc/group") if len(e) >= 3]
    entry = next((e for e in passwd if e[0] == name_part or e[2] == name_part), None)
    if name_part.isdigit():
        uid = int(name_part)
    elif entry is not None and entry[2].isdigit():
        uid = int(entry[2])
    else:
        raise TaskSetupError(f"unable to find user {name_part}: no matching entries in passwd file")
    if group_part:
        if group_part.isdigit():
            gid = int(group_part)
        else:
            group = next((g for g in groups if g[0] == group_part), None)
            if group is None or not group[2].isdigit():
                raise TaskSetupError(f"unable to find group {group_part}: no matching entries in group file")
            gid = int(group[2])
    elif entry is not None and entry[3].isdigit():
        gid = int(entry[3])
    else:
        gid = 0
    user_name = entry[0] if entry is not None else None
    member_of = [
        int(g[2])
        for g in groups
        if user_name and len(g) >= 4 and user_name in g[3].split(",") and g[2].isdigit()
    ]
    return {"uid": uid, "gid": gid, "additionalGids": member_of or [gid]}


def _bind(target: str, source: str, options: list[str]) -> dict[str, Any]:
    return {"destination": target, "type": "bind", "source": source, "options": options}


def _depth(target: str) -> int:
    return len([part for part in posixpath.normpath(target).split("/") if part])


def task_mounts(spec: ContainerSpec, hostname_file: str) -> list[dict[str, Any]]:
    """The task's own mounts, parents before what is mounted inside them."""
    mounts: list[dict[str, Any]] = [
        {"destination": target, "type": "tmpfs", "source": "tmpfs", "options": tmpfs_options(options)}
        for target, options in spec.tmpfs.items()
    ]
    mounts += [_bind(b.target, b.source, bind_options(b.read_only)) for b in spec.binds]
    # as Docker: the hostname file is read-only when the root is
    mounts.append(_bind("/etc/hostname", hostname_file, bind_options(spec.read_only_root)))
    return sorted(mounts, key=lambda m: _depth(m["destination"]))


def oci_config(
    *,
    spec: ContainerSpec,
    image: PreparedImage,
    policy: SandboxPolicy,
    container_id: str,
    hostname_file: str,
    cgroups_path: str | None,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    if not spec.network_disabled:
        raise TaskSetupError("the OCI backend runs containers without a network only")
    hostname = container_id[:HOSTNAME_LENGTH]
    args = command(spec, image)
    mounts = [dict(m) for m in policy.mounts]
    if policy.init is not None:
        args = [policy.init.target, "--", *args]
        mounts.append(
            {
                "destination": policy.init.target,
                "type": "bind",
                "source": policy.init.source,
                "options": ["bind", "ro"],
            }
        )
    mounts += task_mounts(spec, hostname_file)
    process: dict[str, Any] = {
        "user": resolve_user(spec.user, image),
        "args": args,
        "env": environment(spec, image, hostname),
        "cwd": spec.working_dir or image.config.working_dir or "/",
        **policy.process,
    }
    # The enforced limit is the parent cgroup's (see cgroups.py); the runtime's own cgroup
    # allows a margin more so that an OOM is always the parent's.
    memory = spec.memory_bytes + MEMORY_MARGIN
    resources: dict[str, Any] = {
        "devices": policy.device_rules,
        "memory": {"limit": memory, "swap": memory, "disableOOMKiller": False},
        "cpu": {"quota": round(spec.cpus * CPU_PERIOD_US), "period": CPU_PERIOD_US},
        "pids": {"limit": spec.pids},
    }
    # Without a cgroups path, dockworker places the container and writes these limits itself
    # (cgroups.py), and the runtime leaves cgroups alone.
    linux = {**policy.linux}
    if cgroups_path is not None:
        linux.update(resources=resources, cgroupsPath=cgroups_path)
    return {
        "ociVersion": OCI_VERSION,
        "process": process,
        "root": {"path": "rootfs", "readonly": spec.read_only_root},
        "hostname": hostname,
        "mounts": mounts,
        "linux": linux,
        "annotations": {**spec.labels, **(annotations or {})},
    }
