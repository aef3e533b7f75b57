"""The runtime-neutral values the engine contract speaks in: what to run, how it ended, what
is there. No backend's own types cross the contract."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, kw_only=True)
class Bind:
    source: str
    target: str
    read_only: bool = True


@dataclass(frozen=True, kw_only=True)
class ContainerSpec:
    image: str
    command: list[str]
    entrypoint: list[str] | None = None  # None: the image's own
    env: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    binds: tuple[Bind, ...] = ()
    working_dir: str | None = None
    user: str = "1000:1000"
    memory_bytes: int = 512 * 1024 * 1024
    cpus: float = 1.0
    pids: int = 256
    tmpfs: dict[str, str] = field(default_factory=dict)
    log_max_bytes: int = 8 * 1024 * 1024
    network_disabled: bool = True
    read_only_root: bool = True
    # A static shell on the engine's host (a copy of busybox-static) that starts the command
    # with its stderr on its stdout, so that the log keeps the order in which the worker wrote
    # across both (Docker reads them through two pipes). None: two streams, as the engine has
    # them. Backends that give the process one pipe already ignore it.
    one_stream_shell: str | None = None


@dataclass(frozen=True, kw_only=True)
class ExitInfo:
    exit_code: int
    oom_killed: bool
    error: str = ""


@dataclass(frozen=True, kw_only=True)
class ResourceUsage:
    """What a container used over its whole life, from the kernel's cgroup accounting of it.
    None where the engine could not say (no accounting on this host, or a figure the kernel does
    not keep, such as the memory peak on cgroup v2 before Linux 5.19)."""

    cpu_time_ms: int | None = None
    peak_memory_bytes: int | None = None


UNKNOWN_USAGE = ResourceUsage()


@dataclass(frozen=True, kw_only=True)
class ContainerInfo:
    id: str
    labels: dict[str, str]
