"""The OCI backend: the engine operations the runner uses, run through an OCI runtime (crun or
runc) directly instead of dockerd, from the same images and with the same sandbox.

A container is a directory under ``<root>/containers/<id>`` (its OCI bundle, labels and what its
supervisor records); the runtime's own state is under ``<root>/runtime``. A container exists
from :meth:`create` until :meth:`remove`, running or exited, like Docker's."""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import queue
import secrets
import select
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...errors import ClientError, ContainerGone, EngineUnavailable, InfrastructureError, TaskSetupError
from ...names import TASK_LABEL
from ..adapter import USER_FAULT_MARKERS, DockerEngine
from ..base import Engine
from ..cgroupfs import CgroupLayout
from ..types import ContainerInfo, ContainerSpec, ExitInfo, ResourceUsage
from . import supervisor
from .cgroups import TaskCgroups, scope_container_ids
from .images import ImageCache
from .policy import DOCKER_BUNDLES, PolicyStore, SandboxPolicy
from .runtime import Runtime
from .seccomp import BPF_ANNOTATION, SeccompUnavailable, compile_profile
from .spec import oci_config
from .supervisor import ContainerDir
from .watch import wait_for_file

log = logging.getLogger("dockworker.engine.oci")

DEFAULT_RUNTIME = "crun"
START_TIMEOUT_S = 30.0
KILL_WAIT_S = 10.0
OUTPUT_POLL_S = 0.05
OUTPUT_CHUNK = 64 * 1024
SCRATCH_READ_ONLY = 1024 * 1024
# A container directory without metadata this old was left half-made by a process that died.
HALF_MADE_AFTER_S = 60.0
# The overlay mount's options must fit in one page.
MAX_MOUNT_OPTIONS = 4000


def _probe_image() -> str:
    from ...stacks.catalog import get_stack

    return get_stack("busybox").image


def _lock_is_free(path: Path) -> bool:
    """Whether no process holds the container's lock (its supervisor has ended, or never ran)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


class BackgroundDeleter:
    """Deletes removed containers' directories on a thread of its own."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Path | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def delete(self, path: Path) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="oci-deleter", daemon=True)
                self._thread.start()
        self._queue.put(path)

    def _run(self) -> None:
        while (path := self._queue.get()) is not None:
            shutil.rmtree(path, ignore_errors=True)

    def close(self, timeout: float = 30) -> None:
        """Delete what is queued, then stop."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout)


def _tail(path: Path, limit: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-limit:].strip()
    except OSError:
        return ""


class OciEngine:
    """Runs containers through an OCI runtime. Thread-safe: the runner's task threads share it."""

    def __init__(
        self,
        root: Path,
        docker: DockerEngine,
        *,
        runtime: str = DEFAULT_RUNTIME,
        probe_image: str | None = None,
        docker_bundles: Path = DOCKER_BUNDLES,
        close_docker: bool = False,
    ) -> None:
        root = root.resolve()
        if any(c in str(root) for c in ",:\\"):
            raise ClientError(f"the OCI backend's directory {root} must not contain ',', ':' or '\\'")
        self._root = root
        self._docker = docker
        self._close_docker = close_docker
        self._containers = root / "containers"
        self._removed = root / "removed"
        for directory in (self._containers, self._removed):
            directory.mkdir(parents=True, exist_ok=True)
        self._deleter = BackgroundDeleter()
        os.chmod(root, 0o700)
        self._runtime = Runtime.find(runtime, root / "runtime")
        self._runtime.state_root.mkdir(parents=True, exist_ok=True)
        self._tools = supervisor.Toolset.find()
        self._images = ImageCache(root / "images", docker)
        self._policy = PolicyStore(root / "policy", docker, probe_image or _probe_image(), docker_bundles)
        self._layout = CgroupLayout.detect()
        self._scope = self.scope_of(root)
        self._lock = threading.Lock()
        self._supervisors: dict[str, subprocess.Popen[bytes]] = {}
        # Notified when a supervisor is registered: an output reader attached before the start
        # waits on it, not on a timer (a 50 ms sleep begun at attach ended well after a no-op
        # container had exited).
        self._supervisor_started = threading.Condition(self._lock)
        self._seccomp_bpf: tuple[SandboxPolicy, str] | None = None
        self.sweep()

    @staticmethod
    def scope_of(root: Path) -> str:
        """The cgroup directory (under ``dockworker-oci``) of the engine rooted at ``root``."""
        return hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:12]

    @property
    def runtime_name(self) -> str:
        return self._runtime.name

    def close(self) -> None:
        self._deleter.close()
        TaskCgroups.remove_scope(self._layout, self._scope)
        if self._close_docker:
            self._docker.close()

    def ping(self) -> None:
        if not os.access(self._runtime.binary, os.X_OK):
            raise EngineUnavailable(f"the OCI runtime {self._runtime.binary} cannot be run")
        if not os.access(self._runtime.state_root, os.W_OK):
            raise EngineUnavailable(
                f"the OCI runtime's state directory {self._runtime.state_root} is not writable"
            )

    def image_exists(self, ref: str) -> bool:
        try:
            return self._images.resolve(ref) is not None
        except EngineUnavailable:
            return False

    # --- one container ---------------------------------------------------------------------

    def _dir(self, container_id: str) -> ContainerDir:
        if len(container_id) != 64 or any(c not in "0123456789abcdef" for c in container_id):
            raise ContainerGone(f"no such container: {container_id}")
        return ContainerDir(self._containers / container_id)

    def _existing(self, container_id: str) -> ContainerDir:
        container = self._dir(container_id)
        if not container.meta.exists():
            raise ContainerGone(f"no such container: {container_id}")
        return container

    def _meta(self, container: ContainerDir) -> dict[str, Any]:
        try:
            data = json.loads(container.meta.read_text())
        except FileNotFoundError as exc:
            raise ContainerGone(f"no such container: {container.id}") from exc
        except ValueError as exc:
            raise InfrastructureError(f"container {container.id[:12]}: unreadable metadata: {exc}") from exc
        if not isinstance(data, dict):
            raise InfrastructureError(f"container {container.id[:12]}: unreadable metadata")
        return data

    def create(self, spec: ContainerSpec) -> str:
        image = self._images.prepare(spec.image)
        policy = self._policy.get()
        container_id = secrets.token_hex(32)
        container = ContainerDir(self._containers / container_id)
        cgroups = TaskCgroups(self._layout, self._scope, container_id)
        lowerdir = ":".join(reversed(image.layers))
        options = f"lowerdir={lowerdir},upperdir={container.scratch}/upper,workdir={container.scratch}/work"
        if len(options) > MAX_MOUNT_OPTIONS:
            raise TaskSetupError(
                f"the image {spec.image} has too many layers ({len(image.layers)}) for one overlay mount"
            )
        config = oci_config(
            spec=spec,
            image=image,
            policy=policy,
            container_id=container_id,
            hostname_file=str(container.hostname),
            cgroups_path=cgroups.runtime_path,
            annotations=self._runtime_annotations(policy),
        )
        try:
            container.path.mkdir(mode=0o700)
            for directory in (container.rootfs, container.scratch):
                directory.mkdir()
                directory.chmod(0o755)
            container.hostname.write_text(config["hostname"] + "\n")
            container.hostname.chmod(0o644)
            container.output.touch(mode=0o600)
            container.lock.touch(mode=0o600)
            container.config.write_text(json.dumps(config))
            meta = {
                "labels": dict(spec.labels),
                "image": spec.image,
                "image_id": image.id,
                "lowerdir": lowerdir,
                "memory_bytes": spec.memory_bytes,
                "keep_bytes": spec.log_max_bytes + 1,
                # a read-only root's writable layer only holds the mount points
                "scratch_bytes": SCRATCH_READ_ONLY if spec.read_only_root else spec.memory_bytes,
                "created": time.time(),
            }
            # the metadata last: a directory without it is a half-made container (swept)
            container.meta.write_text(json.dumps(meta))
        except OSError as exc:
            shutil.rmtree(container.path, ignore_errors=True)
            raise InfrastructureError(f"create container: {exc}") from exc
        return container_id

    def _runtime_annotations(self, policy: SandboxPolicy) -> dict[str, str]:
        """For crun: the seccomp profile compiled once (see seccomp.py) instead of per start."""
        profile = policy.linux.get("seccomp")
        if self._runtime.name != "crun" or not profile:
            return {}
        with self._lock:
            if self._seccomp_bpf is None or self._seccomp_bpf[0] is not policy:
                try:
                    program = base64.b64encode(compile_profile(profile)).decode()
                except SeccompUnavailable as exc:
                    log.warning("oci.seccomp_precompile_unavailable: %s", exc)
                    program = ""
                self._seccomp_bpf = (policy, program)
            program = self._seccomp_bpf[1]
        return {BPF_ANNOTATION: program} if program else {}

    def start(self, container_id: str) -> None:
        container = self._existing(container_id)
        meta = self._meta(container)
        if container.launched.exists():
            raise TaskSetupError(f"start container: {container_id[:12]} was already started")
        cgroups = TaskCgroups(self._layout, self._scope, container_id)
        oom_events = cgroups.create(int(meta["memory_bytes"]))
        lock = os.open(container.lock, os.O_RDWR | os.O_CLOEXEC)
        log = os.open(container.supervisor_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)  # handed over to the supervisor with the descriptor
            process = subprocess.Popen(
                supervisor.argv(
                    tools=self._tools,
                    container=container,
                    layer_root=self._images.layer_root,
                    lowerdir=str(meta["lowerdir"]),
                    keep_bytes=int(meta["keep_bytes"]),
                    scratch_bytes=int(meta["scratch_bytes"]),
                    runtime_binary=self._runtime.binary,
                    runtime_root=self._runtime.state_root,
                    hide_unified=self._runtime.hide_unified,
                ),
                stdin=oom_events if oom_events is not None else subprocess.DEVNULL,
                stdout=lock,
                stderr=log,
                start_new_session=True,
                close_fds=True,
            )
        except OSError as exc:
            cgroups.remove()
            raise InfrastructureError(f"start container: cannot start its supervisor: {exc}") from exc
        finally:
            for fd in (lock, log, oom_events):
                if fd is not None:
                    os.close(fd)
        with self._lock:
            self._supervisors[container_id] = process
            self._supervisor_started.notify_all()
        container.launched.write_text(f"{process.pid}\n")
        self._wait_started(container, process)

    def _wait_started(self, container: ContainerDir, process: subprocess.Popen[bytes]) -> None:
        if wait_for_file(container.pid, process.pid, START_TIMEOUT_S):
            return
        if process.poll() is not None:
            raise self._start_failure(container, process.returncode)
        self._runtime.kill(container.id)
        raise InfrastructureError(f"start container: not running after {START_TIMEOUT_S:.0f} s")

    def _start_failure(self, container: ContainerDir, status: int) -> InfrastructureError | TaskSetupError:
        setup = supervisor.SETUP_FAILURES.get(status)
        details = " ".join(filter(None, (_tail(container.runtime_log), _tail(container.supervisor_log))))
        if setup is not None:
            return InfrastructureError(f"start container: {setup}: {details}")
        message = f"start container: {self._runtime.name}: {details or f'exit status {status}'}"
        if any(marker in details.lower() for marker in USER_FAULT_MARKERS):
            return TaskSetupError(message)
        return InfrastructureError(message)

    def _finished(self, container: ContainerDir) -> bool:
        """Everything the supervisor records is there: it was started and it has ended (or the
        container is gone)."""
        if not container.path.exists():
            return True
        return container.launched.exists() and _lock_is_free(container.lock)

    def _wait_finished(self, container: ContainerDir, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._lock:
            process = self._supervisors.get(container.id)
        while not self._finished(container):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if process is not None and process.poll() is None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(min(remaining, OUTPUT_POLL_S))
            else:
                time.sleep(min(remaining, OUTPUT_POLL_S))
        return True

    def attach(self, container_id: str) -> Iterator[bytes]:
        """The container's output (stdout and stderr through one pipe, in the order written),
        from its beginning until its supervisor has recorded the exit. Call before start."""
        container = self._existing(container_id)
        return self._output(container)

    def follow_logs(self, container_id: str) -> Iterator[bytes]:
        container = self._existing(container_id)
        return self._output(container)

    def _output(self, container: ContainerDir) -> Iterator[bytes]:
        try:
            fd = os.open(container.output, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError as exc:
            raise ContainerGone(f"no such container: {container.id}") from exc
        pidfd: int | None = None
        fired = False
        try:
            while True:
                data = os.read(fd, OUTPUT_CHUNK)
                if data:
                    yield data
                    continue
                if self._finished(container):
                    while data := os.read(fd, OUTPUT_CHUNK):
                        yield data
                    return
                if pidfd is None and not fired:
                    pidfd, known = self._supervisor_pidfd(container.id)
                    fired = known and pidfd is None  # it has exited already: poll what is left
                if pidfd is not None:
                    # wakes the moment the supervisor exits
                    readable, _, _ = select.select([pidfd], [], [], OUTPUT_POLL_S)
                    if readable:
                        os.close(pidfd)
                        pidfd, fired = None, True
                elif not fired:
                    self._await_supervisor(container.id, OUTPUT_POLL_S)
                else:
                    time.sleep(OUTPUT_POLL_S)
        finally:
            os.close(fd)
            if pidfd is not None:
                os.close(pidfd)

    def _await_supervisor(self, container_id: str, timeout: float) -> None:
        """Until this process has started the container's supervisor, or ``timeout`` (one
        started by an earlier process of the runner is never registered: polled)."""
        with self._supervisor_started:
            self._supervisor_started.wait_for(lambda: container_id in self._supervisors, timeout)

    def _supervisor_pidfd(self, container_id: str) -> tuple[int | None, bool]:
        """A pidfd of the container's supervisor, and whether this process started one."""
        with self._lock:
            process = self._supervisors.get(container_id)
        if process is None:
            return None, False
        try:
            return os.pidfd_open(process.pid), True
        except OSError:  # already reaped
            return None, True

    def wait(self, container_id: str, timeout: float = 30) -> ExitInfo:
        container = self._existing(container_id)
        if not container.launched.exists():
            raise InfrastructureError(f"wait container: {container_id[:12]} was never started")
        if not self._wait_finished(container, timeout):
            raise InfrastructureError(
                f"wait container: {container_id[:12]} still running after {timeout:.0f} s"
            )
        self._reap(container_id)
        try:
            exit_code = int(container.exit.read_text().strip())
        except (OSError, ValueError) as exc:
            raise InfrastructureError(
                f"wait container: its supervisor ended without recording an exit status "
                f"({_tail(container.supervisor_log) or 'no message'})"
            ) from exc
        return ExitInfo(exit_code=exit_code, oom_killed=self._oom_killed(container), error="")

    def _oom_killed(self, container: ContainerDir) -> bool:
        if self._layout.memory_on_v2:
            return TaskCgroups(self._layout, self._scope, container.id).oom_kills_v2() > 0
        try:
            return int(container.oom.read_text().strip() or 0) > 0
        except (OSError, ValueError):
            return False

    def usage(self, container_id: str) -> ResourceUsage:
        """Read from the container's parent cgroup, which outlives the runtime's own (cgroups.py)
        until :meth:`remove`."""
        self._existing(container_id)
        return TaskCgroups(self._layout, self._scope, container_id).usage()

    def accounted_tasks(self, installation_id: str) -> set[str]:
        """None apart from containers: a container's cgroups go with it (and :meth:`sweep`
        removes those whose container is gone)."""
        return set()

    def release_accounting(self, installation_id: str, task_id: str) -> bool:
        return True

    def kill(self, container_id: str) -> None:
        """SIGKILL every process of the container; returns once it has exited."""
        try:
            container = self._existing(container_id)
        except ContainerGone:
            return
        if not container.launched.exists() or self._finished(container):
            return
        self._runtime.kill(container_id, "KILL")
        if not self._wait_finished(container, KILL_WAIT_S):
            raise InfrastructureError(
                f"kill container: {container_id[:12]} still running after {KILL_WAIT_S:.0f} s"
            )

    def signal(self, container_id: str, signal: str) -> None:
        """Send ``signal`` to every process of the container (as an operator would)."""
        self._runtime.kill(self._existing(container_id).id, signal)

    def remove(self, container_id: str) -> None:
        """Remove the container, killing it first if it runs; a container already gone is fine."""
        try:
            container = self._dir(container_id)
        except ContainerGone:
            return
        if not container.path.exists():
            return
        if container.launched.exists() and not self._finished(container):
            self._runtime.kill(container_id, "KILL")
            if not self._wait_finished(container, KILL_WAIT_S):
                raise InfrastructureError(f"remove container: {container_id[:12]} still running")
        self._runtime.delete(container_id)
        self._reap(container_id)
        TaskCgroups(self._layout, self._scope, container_id).remove()
        if os.path.ismount(container.rootfs):  # only if something mounted it on the host
            subprocess.run(["umount", "--lazy", str(container.rootfs)], check=False, capture_output=True)
        # Gone at once for every reader (one rename); its files are deleted off the task's path.
        trashed = self._removed / f"{container_id}-{secrets.token_hex(4)}"
        try:
            os.rename(container.path, trashed)
        except OSError as exc:
            raise InfrastructureError(f"remove container: cannot remove {container.path}: {exc}") from exc
        self._deleter.delete(trashed)

    def _reap(self, container_id: str) -> None:
        with self._lock:
            process = self._supervisors.get(container_id)
        if process is not None and process.poll() is not None:
            with self._lock:
                self._supervisors.pop(container_id, None)

    # --- all containers --------------------------------------------------------------------

    def list_labelled(self, label: str = TASK_LABEL) -> list[ContainerInfo]:
        key, has_value, value = label.partition("=")
        found: list[ContainerInfo] = []
        for entry in sorted(self._containers.iterdir()):
            container = ContainerDir(entry)
            try:
                labels = dict(self._meta(container)["labels"])
            except (ContainerGone, InfrastructureError, KeyError, TypeError):
                continue
            if key not in labels or (has_value and labels[key] != value):
                continue
            found.append(ContainerInfo(id=container.id, labels=labels))
        return found

    def running(self, container_id: str) -> bool:
        """Whether the container's supervisor (and so maybe the container) still runs."""
        container = self._existing(container_id)
        return container.launched.exists() and not self._finished(container)

    def started_at(self, container_id: str) -> float | None:
        container = self._existing(container_id)
        try:
            return container.pid.stat().st_mtime
        except FileNotFoundError:
            return None

    def memory_limit(self, container_id: str) -> int:
        return int(self._meta(self._existing(container_id))["memory_bytes"])

    def sweep(self) -> None:
        """Remove what no container accounts for: runtime state of a container whose directory
        is gone, cgroups of this root with no container, half-made container directories, and
        the files of removed containers an earlier process did not get to delete."""
        for trashed in self._removed.iterdir():
            shutil.rmtree(trashed, ignore_errors=True)
        known = {entry.name for entry in self._containers.iterdir()}
        for container_id in self._runtime.container_ids():
            if container_id not in known:
                with contextlib.suppress(InfrastructureError):
                    self._runtime.delete(container_id)
        for container_id in scope_container_ids(self._layout, self._scope) - known:
            with contextlib.suppress(InfrastructureError):
                TaskCgroups(self._layout, self._scope, container_id).remove()
        for name in known:
            container = ContainerDir(self._containers / name)
            if container.meta.exists() or container.launched.exists():
                continue
            with contextlib.suppress(FileNotFoundError):  # half-made, unless still being made
                if time.time() - container.path.stat().st_mtime > HALF_MADE_AFTER_S:
                    shutil.rmtree(container.path, ignore_errors=True)


if TYPE_CHECKING:

    def _is_an_engine(oci: OciEngine) -> Engine:
        """mypy checks here that the OCI backend keeps the engine contract."""
        return oci
