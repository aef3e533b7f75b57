"""The worker-side contract: what a task's container sees. Shared by the runner and
``dockworker run-local`` so both run a worker identically."""

from __future__ import annotations

import functools
import logging
import os
import shlex
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..engine import Bind, ContainerSpec
from ..errors import ClientError, TaskSetupError
from ..models import CodeSpec
from ..names import (
    CODE_DIR,
    CONFIG_NAME,
    INSTALLATION_LABEL,
    PAYLOAD_NAME,
    PROGRESS_NAME,
    RUNNER_LABEL,
    TASK_DIR,
    TASK_LABEL,
)
from ..settings import MB, Settings
from ..stacks.catalog import get_stack, legacy_command, stack_for_runtime

PROGRESS_PATH = f"{TASK_DIR}/{PROGRESS_NAME}"
HOSTS_FILE = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"


@dataclass(frozen=True, kw_only=True)
class TaskFiles:
    """Host-side paths of one task's inputs."""

    task_dir: Path
    code_dir: Path | None
    hosts_file: Path
    # The progress channel's FIFO (runner/progress.py); None: the task gets no channel.
    progress_fifo: Path | None = None
    # See ContainerSpec.one_stream_shell (ensure_one_stream_shell); None: two streams.
    one_stream_shell: Path | None = None


def check_launch(
    *,
    image: str | None,
    stack: str | None,
    runtime: str | None,
    command: str | None,
    file_name: str | None,
    option: Callable[[str], str],
) -> None:
    """How a code package starts: an image, or a stack/runtime with a command or a file to run.
    ``option`` names a field as the caller's user knows it (API field or CLI option)."""
    if image and (stack or runtime):
        raise ClientError(f"give either {option('image')} or {option('stack')}/{option('runtime')}, not both")
    if not (image or stack or runtime):
        raise ClientError(f"give one of {option('stack')}, {option('image')} or {option('runtime')}")
    if stack:
        get_stack(stack)
    if runtime:
        stack_for_runtime(runtime)
        if not command and not file_name:
            raise ClientError(
                f"{option('runtime')} needs {option('file_name')} (the file to run) or {option('command')}"
            )
    if stack and not runtime and not command:
        raise ClientError(
            f"{option('stack')} needs {option('command')} (or {option('runtime')} and {option('file_name')})"
        )
    if command is not None:
        try:
            shlex.split(command)
        except ValueError as exc:  # else every task of the package would fail the same way
            raise ClientError(f"{option('command')} {command!r} cannot be split into words: {exc}") from exc


def resolve_image(spec: CodeSpec) -> str:
    if spec.image:
        return spec.image
    if spec.stack:
        return get_stack(spec.stack).image
    if spec.runtime:
        return stack_for_runtime(spec.runtime).image
    raise TaskSetupError("the code package names neither an image nor a stack")


def with_build_hint(spec: CodeSpec, message: str) -> str:
    """A missing image's message, with the command that builds it when it is a stack's."""
    if spec.image:
        return message
    stack = get_stack(spec.stack) if spec.stack else stack_for_runtime(spec.runtime or "")
    build = f"dockworker stacks build {stack.name}"
    return f"{message} (the {stack.name} stack is not built on this engine: run '{build}')"


def resolve_command(spec: CodeSpec, task_id: str, has_config: bool) -> list[str]:
    """The command to run; empty means the image's own default command."""
    if spec.command:
        try:
            return shlex.split(spec.command)
        except ValueError as exc:
            raise TaskSetupError(f"cannot parse command {spec.command!r}: {exc}") from exc
    if spec.runtime and spec.file_name:
        command = legacy_command(spec.runtime, spec.file_name, spec.stack)
        command += ["-payload", f"{TASK_DIR}/{PAYLOAD_NAME}"]
        if has_config:
            command += ["-config", f"{TASK_DIR}/{CONFIG_NAME}"]
        return [*command, "-id", task_id, "-d", TASK_DIR]
    return []


def write_task_files(task_dir: Path, payload: str, config: str | None, uid: int, gid: int) -> None:
    task_dir.mkdir(parents=True, exist_ok=True)
    (task_dir / PAYLOAD_NAME).write_text(payload)
    if config is not None:
        (task_dir / CONFIG_NAME).write_text(config)
    for path in (task_dir, *task_dir.iterdir()):
        try:
            os.chown(path, uid, gid)
        except PermissionError:  # not root: the directory stays ours and world-readable
            path.chmod(0o777 if path.is_dir() else 0o666)


def ensure_hosts_file(data_dir: Path) -> Path:
    path = data_dir / "hosts"
    if not path.exists() or path.read_text() != HOSTS_FILE:
        data_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(HOSTS_FILE)
        path.chmod(0o644)
    return path


STATIC_SHELL = Path("/bin/busybox")  # Debian's busybox-static (scripts/setup.sh installs it)
_shell_copies: dict[Path, Path | None] = {}
_shell_copying = threading.Lock()  # task threads start together


def ensure_one_stream_shell(data_dir: Path, source: Path = STATIC_SHELL) -> Path | None:
    """A copy of the host's static busybox in the data directory (``bin/busybox``), for
    ``ContainerSpec.one_stream_shell``: in the data directory so that a runner that itself runs
    in a container (the dockworker/runner image) names a path that the engine's host has too.
    None, and a warning once, when the host has no static busybox: a log then keeps stdout's
    and stderr's lines each in order, but not always in order with each other."""
    with _shell_copying:
        if data_dir not in _shell_copies:
            _shell_copies[data_dir] = _copy_shell(data_dir, source)
        return _shell_copies[data_dir]


def _copy_shell(data_dir: Path, source: Path) -> Path | None:
    target = data_dir / "bin" / "busybox"
    copy: Path | None = target
    try:
        head = source.read_bytes()[:20]
        static = head[:4] == b"\x7fELF" and _is_static(source)
        if not static:
            raise OSError(f"{source} is not a static binary")
        if not target.exists() or target.stat().st_size != source.stat().st_size:
            target.parent.mkdir(parents=True, exist_ok=True)
            temporary = target.with_suffix(f".{os.getpid()}.tmp")  # processes may share the directory
            shutil.copyfile(source, temporary)
            temporary.chmod(0o755)
            temporary.replace(target)
    except OSError as exc:
        logging.getLogger("dockworker.runner").warning(
            "runner.two_streams: %s; install busybox-static so that a task's log keeps its order", exc
        )
        copy = None
    return copy


def _is_static(binary: Path) -> bool:
    """No program interpreter (PT_INTERP) among the ELF program headers: statically linked."""
    data = binary.read_bytes()
    if len(data) < 64 or data[4] != 2:  # 64-bit only
        return False
    phoff = int.from_bytes(data[32:40], "little")
    entry_size = int.from_bytes(data[54:56], "little")
    count = int.from_bytes(data[56:58], "little")
    for index in range(count):
        start = phoff + index * entry_size
        if int.from_bytes(data[start : start + 4], "little") == 3:  # PT_INTERP
            return False
    return True


def parse_user(user: str) -> tuple[int, int]:
    uid, _, gid = user.partition(":")
    return int(uid), int(gid or uid)


def container_spec(
    *,
    spec: CodeSpec,
    task_id: str,
    files: TaskFiles,
    settings: Settings,
    runner_id: str,
    installation_id: str,
) -> ContainerSpec:
    limits = settings.limits
    has_config = spec.config is not None
    uid, gid = parse_user(settings.task_user)
    # TASK_DIR is a size-limited tmpfs (a task cannot fill the host's disk); the payload and
    # config files are bound into it read-only from the host's per-task directory.
    task_dir = files.task_dir.resolve()  # the files in it are ours, made just now: no links
    binds = [
        Bind(source=str(task_dir / PAYLOAD_NAME), target=f"{TASK_DIR}/{PAYLOAD_NAME}"),
        Bind(source=_resolved(files.hosts_file), target="/etc/hosts", read_only=True),
    ]
    if has_config:
        binds.append(Bind(source=str(task_dir / CONFIG_NAME), target=f"{TASK_DIR}/{CONFIG_NAME}"))
    if files.code_dir is not None:
        binds.append(Bind(source=_resolved(files.code_dir), target=CODE_DIR, read_only=True))
    if files.progress_fifo is not None:
        fifo = files.progress_fifo
        source = str(task_dir / fifo.name) if fifo.parent == files.task_dir else str(fifo.resolve())
        # Writable: it is a pipe to the runner, and a mount point the task cannot replace.
        binds.append(Bind(source=source, target=PROGRESS_PATH, read_only=False))
    # The package's variables, secret ones included (names the contract sets are refused at
    # upload, and the contract's values win anyway).
    env = {**spec.env_vars, **spec.secret_env_vars}
    env.update(
        TASK_ID=task_id,
        TASK_DIR=TASK_DIR,
        PAYLOAD_FILE=f"{TASK_DIR}/{PAYLOAD_NAME}",
        CONFIG_FILE=f"{TASK_DIR}/{CONFIG_NAME}",
        HOME=TASK_DIR,
    )
    if files.code_dir is not None:
        env["CODE_DIR"] = CODE_DIR
    if files.progress_fifo is not None:
        env["PROGRESS_FILE"] = PROGRESS_PATH
    return ContainerSpec(
        image=resolve_image(spec),
        command=resolve_command(spec, task_id, has_config),
        env=env,
        labels={TASK_LABEL: task_id, RUNNER_LABEL: runner_id, INSTALLATION_LABEL: installation_id},
        binds=tuple(binds),
        working_dir=CODE_DIR if files.code_dir is not None else TASK_DIR,
        user=settings.task_user,
        memory_bytes=(spec.memory_mb or limits.memory_mb) * MB,
        cpus=spec.cpus or limits.cpus,
        pids=spec.pids or limits.pids,
        tmpfs={
            "/tmp": f"rw,nosuid,nodev,size={limits.tmp_mb}m,mode=1777",
            TASK_DIR: f"rw,exec,nosuid,nodev,size={limits.task_dir_mb}m,mode=0755,uid={uid},gid={gid}",
        },
        log_max_bytes=limits.log_bytes,
        one_stream_shell=None if files.one_stream_shell is None else _resolved(files.one_stream_shell),
    )


@functools.lru_cache(maxsize=512)
def _resolved(path: Path) -> str:
    """The absolute, link-free path of a file of the data directory that outlives its tasks
    (hosts file, static shell, unpacked code): resolved once, not for every task (a resolve
    is a system call per component of the path)."""
    return str(path.resolve())
