"""The sandbox every OCI-backend container gets, taken from the Docker engine itself.

dockworker's Docker path asks the engine for a hardened container (see ``DockerEngine.create``);
the engine turns that into an OCI spec for its runtime. The parts of that spec that do not
depend on the task (the default seccomp profile, masked and read-only /proc and /sys paths, the
/proc, /dev, /sys, cgroup, mqueue and shm mounts, the devices cgroup rules, namespaces,
sysctls, capabilities, no-new-privileges, the init binary) are read from the spec the engine
generated for a probe container made through that same adapter method, and kept per engine
version. So the OCI backend cannot drift from what the Docker path guarantees, and carries no
copy of Docker's profiles."""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ... import __version__
from ...errors import EngineUnavailable, InfrastructureError, TaskSetupError
from ..types import ContainerSpec

# Where dockerd (20.10+, containerd's runtime v2 shim) keeps each running container's bundle.
DOCKER_BUNDLES = Path("/run/docker/containerd/daemon/io.containerd.runtime.v2.task/moby")
PROBE_LABEL = "dockworker.oci-probe"
PROBE_WAIT_S = 10.0
# How often the engine's version is asked again (an upgraded engine gets a fresh probe).
VERSION_RECHECK_S = 60.0
# Mounts the engine makes per container (dockworker makes its own of these).
_PER_CONTAINER_TARGETS = frozenset({"/etc/hostname", "/etc/hosts", "/etc/resolv.conf"})
_PROCESS_KEYS = (
    "capabilities",
    "noNewPrivileges",
    "oomScoreAdj",
    "rlimits",
    "apparmorProfile",
    "selinuxLabel",
)
_LINUX_KEYS = (
    "namespaces",
    "maskedPaths",
    "readonlyPaths",
    "seccomp",
    "sysctl",
    "devices",
    "rootfsPropagation",
)


class ProbeEngine(Protocol):
    """What the probe needs of the Docker engine (the Docker adapter)."""

    def engine_version(self) -> str: ...

    def image_exists(self, ref: str) -> bool: ...

    def create(self, spec: ContainerSpec) -> str: ...

    def start(self, container_id: str) -> None: ...

    def remove(self, container_id: str) -> None: ...


@dataclass(frozen=True, kw_only=True)
class InitBinary:
    source: str  # on the host
    target: str  # in the container


@dataclass(frozen=True, kw_only=True)
class SandboxPolicy:
    engine_version: str
    process: dict[str, Any]
    linux: dict[str, Any]
    device_rules: list[dict[str, Any]]
    mounts: list[dict[str, Any]]
    init: InitBinary | None

    @classmethod
    def from_docker_spec(cls, engine_version: str, config: dict[str, Any]) -> SandboxPolicy:
        process = config.get("process") or {}
        linux = config.get("linux") or {}
        args = process.get("args") or []
        init: InitBinary | None = None
        mounts: list[dict[str, Any]] = []
        for mount in config.get("mounts") or []:
            target = mount.get("destination")
            if mount.get("type") == "bind" and args and target == args[0]:
                init = InitBinary(source=str(mount["source"]), target=str(target))
            elif target not in _PER_CONTAINER_TARGETS:
                mounts.append(dict(mount))
        if init is None:
            raise InfrastructureError(
                "the Docker engine's spec for a dockworker container has no init process"
            )
        return cls(
            engine_version=engine_version,
            process={k: process[k] for k in _PROCESS_KEYS if k in process},
            linux={k: linux[k] for k in _LINUX_KEYS if k in linux},
            device_rules=list((linux.get("resources") or {}).get("devices") or []),
            mounts=mounts,
            init=init,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "engine_version": self.engine_version,
            "process": self.process,
            "linux": self.linux,
            "device_rules": self.device_rules,
            "mounts": self.mounts,
            "init": None if self.init is None else {"source": self.init.source, "target": self.init.target},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SandboxPolicy:
        init = data.get("init")
        return cls(
            engine_version=str(data["engine_version"]),
            process=dict(data["process"]),
            linux=dict(data["linux"]),
            device_rules=list(data["device_rules"]),
            mounts=list(data["mounts"]),
            init=None if init is None else InitBinary(source=str(init["source"]), target=str(init["target"])),
        )


def probe_spec(image: str) -> ContainerSpec:
    """A container as the runner makes them, doing nothing for a while."""
    return ContainerSpec(
        image=image,
        command=["sleep", "60"],
        labels={PROBE_LABEL: "1"},
        memory_bytes=64 * 1024 * 1024,
        pids=16,
    )


def read_generated_spec(engine: ProbeEngine, image: str, bundles: Path = DOCKER_BUNDLES) -> dict[str, Any]:
    """Run a probe container through the Docker adapter and read the OCI spec the engine
    generated for it."""
    if not engine.image_exists(image):
        raise TaskSetupError(
            f"the OCI backend takes its sandbox from the Docker engine with a probe container of {image}, "
            "which is not built: run 'dockworker stacks build busybox'"
        )
    container_id = engine.create(probe_spec(image))
    try:
        engine.start(container_id)
        path = bundles / container_id / "config.json"
        deadline = time.monotonic() + PROBE_WAIT_S
        while True:
            try:
                data = json.loads(path.read_text())
                break
            except (FileNotFoundError, ValueError):
                if time.monotonic() > deadline:
                    raise InfrastructureError(
                        f"the engine's spec for the probe container is not at {path}"
                    ) from None
                time.sleep(0.02)
        if not isinstance(data, dict):
            raise InfrastructureError(f"unexpected OCI spec at {path}")
        return data
    finally:
        engine.remove(container_id)


class PolicyStore:
    """The policy per engine version (and dockworker version), probed once and kept on disk."""

    def __init__(
        self, root: Path, engine: ProbeEngine, probe_image: str, bundles: Path = DOCKER_BUNDLES
    ) -> None:
        self._root = root
        self._engine = engine
        self._probe_image = probe_image
        self._bundles = bundles
        self._root.mkdir(parents=True, exist_ok=True)
        self._current: SandboxPolicy | None = None
        self._checked_at = float("-inf")
        self._lock = threading.Lock()

    def _path(self, engine_version: str) -> Path:
        safe = "".join(c if c.isalnum() or c in ".+-" else "_" for c in engine_version)
        return self._root / f"docker-{safe}-dockworker-{__version__}.json"

    def get(self) -> SandboxPolicy:
        """The policy of the engine as it is now (its version is asked at most once a minute);
        the last one probed when the engine cannot be reached."""
        with self._lock:
            if self._current is not None and time.monotonic() - self._checked_at < VERSION_RECHECK_S:
                return self._current
            try:
                version = self._engine.engine_version()
            except InfrastructureError:
                if self._current is None:
                    self._current = self._last_probed()
                return self._current
            self._checked_at = time.monotonic()
            if self._current is None or self._current.engine_version != version:
                self._current = self._load_or_probe(version)
            return self._current

    def _last_probed(self) -> SandboxPolicy:
        cached = sorted(self._root.glob("docker-*.json"), key=lambda p: p.stat().st_mtime)
        if not cached:
            raise EngineUnavailable("the Docker engine is unreachable and the OCI sandbox was never probed")
        return SandboxPolicy.from_json(json.loads(cached[-1].read_text()))

    def _load_or_probe(self, version: str) -> SandboxPolicy:
        path = self._path(version)
        try:
            return SandboxPolicy.from_json(json.loads(path.read_text()))
        except (OSError, ValueError, KeyError):
            pass
        policy = SandboxPolicy.from_docker_spec(
            version, read_generated_spec(self._engine, self._probe_image, self._bundles)
        )
        temporary = path.with_name(f".tmp-{uuid.uuid4().hex}")
        temporary.write_text(json.dumps(policy.to_json(), indent=1))
        os.replace(temporary, path)
        return policy
