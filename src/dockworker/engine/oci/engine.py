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
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...errors import ClientError, ContainerGone, EngineUnavailable, InfrastructureError, TaskSetupError
from ...names import TASK_LABEL
from ..adapter import USER_FAULT_MARKERS, DockerEngine
from ..base import Engine
from ..cgroupfs import CgroupLayout
from ..types import ContainerInfo, ContainerSpec, ExitInfo, ResourceUsage
from . import supervisor
from .cgroups import TaskCgroups, places_containers, scope_container_ids
from .images import ImageCache
from .parking import ParkedSupervisor, Parking, read_report
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


class Chores:
    """Work off the tasks' path, in order, on a thread of its own: deleting removed containers'
    files, moving the runtime out of a started container's cgroup."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def do(self, chore: Callable[[], None]) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="oci-chores", daemon=True)
                self._thread.start()
        self._queue.put(chore)

    def delete(self, path: Path) -> None:
        self.do(lambda: shutil.rmtree(path, ignore_errors=True))

    def _run(self) -> None:
        while (chore := self._queue.get()) is not None:
            try:
                chore()
            except Exception:
                log.exception("oci.chore_failed")

    def close(self, timeout: float = 30) -> None:
        """Do what is queued, then stop."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout)


def _pipe(*, child_end: int) -> tuple[int, int]:
    """A pipe whose end for a supervisor (0: read, 1: write) is numbered 10 or more: the script
    moves its pipes to 3, 4 and 5 and closes the originals, which must not be any of those."""
    ends = list(os.pipe())
    try:
        moved = fcntl.fcntl(ends[child_end], fcntl.F_DUPFD_CLOEXEC, 10)
    except OSError:
        for fd in ends:
            os.close(fd)
        raise
    os.close(ends[child_end])
    ends[child_end] = moved
    return ends[0], ends[1]


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
        self._chores = Chores()
        os.chmod(root, 0o700)
        self._runtime = Runtime.find(runtime, root / "runtime")
        self._runtime.state_root.mkdir(parents=True, exist_ok=True)
        self._tools = supervisor.Toolset.find()
        self._images = ImageCache(root / "images", docker)
        self._policy = PolicyStore(root / "policy", docker, probe_image or _probe_image(), docker_bundles)
        self._layout = CgroupLayout.detect()
        self._scope = self.scope_of(root)
        # crun on a cgroup v1 host: dockworker places each container in its cgroup (cgroups.py)
        self._places = self._runtime.name == "crun" and places_containers(self._layout)
        self._parking: Parking[ParkedSupervisor] = Parking(self._park, self._discard)
        # created containers whose supervisor waits for their start
        self._parked: dict[str, ParkedSupervisor] = {}
        self._closed = False
        self._identity = _process_identity(os.getpid())
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
        self._parking.close()
        with self._lock:
            self._closed = True
            waiting, self._parked = list(self._parked.values()), {}
        for unit in waiting:  # created, never started: their containers stay until removed
            unit.dismiss()
        self._chores.close()
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
        lowerdir = ":".join(reversed(image.layers))
        unit = self._parking.take()
        container = unit.container
        container_id = container.id
        try:
            scratch = container.scratch
            options = f"lowerdir={lowerdir},upperdir={scratch}/upper,workdir={scratch}/work"
            if len(options) > MAX_MOUNT_OPTIONS:
                raise TaskSetupError(
                    f"the image {spec.image} has too many layers ({len(image.layers)}) for one overlay mount"
                )
            cgroups = TaskCgroups(self._layout, self._scope, container_id)
            config = oci_config(
                spec=spec,
                image=image,
                policy=policy,
                container_id=container_id,
                hostname_file=str(container.hostname),
                cgroups_path=None if self._places else cgroups.runtime_path,
                annotations=self._runtime_annotations(policy),
            )
            container.hostname.write_text(config["hostname"] + "\n")
            container.hostname.chmod(0o644)
            container.config.write_text(json.dumps(config))
            meta = {
                "labels": dict(spec.labels),
                "image": spec.image,
                "image_id": image.id,
                "lowerdir": lowerdir,
                "memory_bytes": spec.memory_bytes,
                "cpus": spec.cpus,
                "pids": spec.pids,
                "placed": self._places,
                "device_rules": policy.device_rules,
                "keep_bytes": spec.log_max_bytes + 1,
                # a read-only root's writable layer only holds the mount points
                "scratch_bytes": SCRATCH_READ_ONLY if spec.read_only_root else spec.memory_bytes,
                "created": time.time(),
            }
            # the metadata last: a directory without it is not a container (swept)
            container.meta.write_text(json.dumps(meta))
        except BaseException as exc:
            self._discard(unit)
            if isinstance(exc, OSError):
                raise InfrastructureError(f"create container: {exc}") from exc
            raise
        with self._lock:
            closed = self._closed
            if not closed:
                self._parked[container_id] = unit
        if closed:
            unit.dismiss()
            raise InfrastructureError("create container: the OCI engine is closed")
        return container_id

    def _park(self) -> ParkedSupervisor:
        """A supervisor for a container to come (parking.py)."""
        container = ContainerDir(self._containers / secrets.token_hex(32))
        cgroups = TaskCgroups(self._layout, self._scope, container.id)
        process: subprocess.Popen[bytes] | None = None
        ours: list[int] = []  # descriptors to close here, whatever happens
        kept: list[int] = []  # the pipes' ends kept by a parked supervisor
        try:
            container.path.mkdir(mode=0o700)
            # who parks here: a sweep leaves this process's alone, and removes the others' once
            # their lock is free (parking.py)
            container.parked.write_text(f"{self._identity}\n")
            for directory in (container.rootfs, container.scratch):
                directory.mkdir()
                directory.chmod(0o755)
            container.output.touch(mode=0o600)
            container.lock.touch(mode=0o600)
            oom_events = None
            if self._places:
                cgroups.prepare()
            else:
                oom_events = cgroups.create_parent()
            if oom_events is not None:
                ours.append(oom_events)
            report, report_end = _pipe(child_end=1)
            ours += [report, report_end]
            task_end, task_line = _pipe(child_end=0)
            ours.append(task_end)
            kept.append(task_line)
            output_end, output_line = _pipe(child_end=0)
            ours.append(output_end)
            kept.append(output_line)
            lock = os.open(container.lock, os.O_RDWR | os.O_CLOEXEC)
            ours.append(lock)
            log_flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
            ours.append(os.open(container.supervisor_log, log_flags, 0o600))
            fcntl.flock(lock, fcntl.LOCK_EX)  # handed over to the supervisor with the descriptor
            process = subprocess.Popen(
                supervisor.argv(
                    tools=self._tools,
                    container=container,
                    pipes=(report_end, task_end, output_end),
                    layer_root=self._images.layer_root,
                    runtime_binary=self._runtime.binary,
                    runtime_options=("--cgroup-manager=disabled",) if self._places else (),
                    runtime_root=self._runtime.state_root,
                    hide_unified=self._runtime.hide_unified,
                ),
                stdin=oom_events if oom_events is not None else subprocess.DEVNULL,
                stdout=lock,
                stderr=ours[-1],
                start_new_session=True,
                close_fds=True,
                pass_fds=(report_end, task_end, output_end),
            )
            for fd in (report_end, task_end, output_end):
                os.close(fd)
                ours.remove(fd)
            runtime_pid = read_report(report, process)
            if self._places:
                cgroups.place(runtime_pid)  # the wait for a grace period: here, not in a start
            with container.parked.open("a") as marker:  # its supervisor, for a sweep to end it
                marker.write(f"{process.pid}\n")
        except BaseException as exc:
            unit_fds, kept = kept, []
            if process is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            for fd in unit_fds:
                os.close(fd)
            self._drop_unused(container)
            if isinstance(exc, OSError):
                raise InfrastructureError(f"park a supervisor: {exc}") from exc
            raise
        finally:
            for fd in ours:
                os.close(fd)
        return ParkedSupervisor(
            container=container,
            process=process,
            task_line=kept[0],
            output_line=kept[1],
            runtime_pid=runtime_pid,
        )

    def _discard(self, unit: ParkedSupervisor) -> None:
        """Dismiss a parked supervisor that has no container, and remove what it held."""
        unit.dismiss()
        self._drop_unused(unit.container)

    def _drop_unused(self, container: ContainerDir) -> None:
        """Remove a directory that holds no container (a parked supervisor's, dismissed or
        gone), and its cgroups."""
        with contextlib.suppress(InfrastructureError):
            self._remove_cgroups(container.id)
        shutil.rmtree(container.path, ignore_errors=True)

    def _remove_cgroups(self, container_id: str) -> None:
        """Remove the container's cgroups; where dockworker placed it, first kill what still
        runs in them (the runtime, its cgroup manager disabled, knows nothing of them)."""
        cgroups = TaskCgroups(self._layout, self._scope, container_id)
        if self._places:
            cgroups.kill_all(KILL_WAIT_S)
        cgroups.remove()

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
        with self._lock:
            unit = self._parked.pop(container_id, None)
        if unit is None:
            raise InfrastructureError(
                f"start container: {container_id[:12]} has no supervisor (made by another process)"
            )
        cgroups = TaskCgroups(self._layout, self._scope, container_id)
        placed = bool(meta.get("placed"))
        try:
            if placed:
                cgroups.limit(
                    memory_bytes=int(meta["memory_bytes"]),
                    cpus=float(meta["cpus"]),
                    pids=int(meta["pids"]),
                    device_rules=list(meta["device_rules"]),
                )
            else:
                cgroups.limit_parent(int(meta["memory_bytes"]))
            lowerdir, scratch = str(meta["lowerdir"]), int(meta["scratch_bytes"])
            keep = int(meta["keep_bytes"])
            container.launched.write_text(f"{unit.process.pid}\n")
        except BaseException as exc:
            unit.dismiss()  # nothing started: the container stays, created, until removed
            if isinstance(exc, (OSError, KeyError, TypeError, ValueError)):
                raise InfrastructureError(f"start container: {exc!r}") from exc
            raise
        with self._lock:
            self._supervisors[container_id] = unit.process
            self._supervisor_started.notify_all()
        unit.launch(lowerdir=lowerdir, scratch_bytes=scratch, keep_bytes=keep)
        self._wait_started(container, unit.process)
        if placed:
            # crun itself is no part of the container: out of its cgroup (and its pids limit)
            self._chores.do(lambda: cgroups.move_out(unit.runtime_pid))

    def _wait_started(self, container: ContainerDir, process: subprocess.Popen[bytes]) -> None:
        if wait_for_file(container.pid, process.pid, START_TIMEOUT_S):
            return
        if process.poll() is not None:
            raise self._start_failure(container, process.returncode)
        self._signal_all(container, "KILL")
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
        cgroups = TaskCgroups(self._layout, self._scope, container.id)
        if self._meta(container).get("placed"):
            return cgroups.oom_kills_v1() > 0
        if self._layout.memory_on_v2:
            return cgroups.oom_kills_v2() > 0
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
        self._signal_all(container, "KILL")
        if not self._wait_finished(container, KILL_WAIT_S):
            raise InfrastructureError(
                f"kill container: {container_id[:12]} still running after {KILL_WAIT_S:.0f} s"
            )

    def signal(self, container_id: str, signal: str) -> None:
        """Send ``signal`` to every process of the container (as an operator would)."""
        self._signal_all(self._existing(container_id), signal)

    def _signal_all(self, container: ContainerDir, name: str) -> None:
        """Signal every process of the container: through the runtime, or (where dockworker
        placed it, and the runtime does not know its cgroup) each process in its cgroup that
        is in the container's pid namespace (not the runtime itself)."""
        try:
            placed = bool(self._meta(container).get("placed"))
        except ContainerGone:
            return
        if not placed:
            self._runtime.kill(container.id, name)
            return
        try:
            number = int(name) if name.isdigit() else signal.Signals[f"SIG{name.removeprefix('SIG')}"]
        except KeyError as exc:
            raise ClientError(f"unknown signal {name!r}") from exc
        own = os.readlink("/proc/self/ns/pid")
        for pid in TaskCgroups(self._layout, self._scope, container.id).processes():
            with contextlib.suppress(OSError):  # gone meanwhile
                if os.readlink(f"/proc/{pid}/ns/pid") != own:
                    os.kill(pid, number)

    def remove(self, container_id: str) -> None:
        """Remove the container, killing it first if it runs; a container already gone is fine."""
        try:
            container = self._dir(container_id)
        except ContainerGone:
            return
        with self._lock:
            unit = self._parked.pop(container_id, None)
        if unit is not None:  # created, never started
            unit.dismiss()
        if not container.path.exists():
            return
        if container.launched.exists() and not self._finished(container):
            self._signal_all(container, "KILL")
            if not self._wait_finished(container, KILL_WAIT_S):
                raise InfrastructureError(f"remove container: {container_id[:12]} still running")
        self._runtime.delete(container_id)
        self._reap(container_id)
        self._remove_cgroups(container_id)
        if os.path.ismount(container.rootfs):  # only if something mounted it on the host
            subprocess.run(["umount", "--lazy", str(container.rootfs)], check=False, capture_output=True)
        # Gone at once for every reader (one rename); its files are deleted off the task's path.
        trashed = self._removed / f"{container_id}-{secrets.token_hex(4)}"
        try:
            os.rename(container.path, trashed)
        except OSError as exc:
            raise InfrastructureError(f"remove container: cannot remove {container.path}: {exc}") from exc
        self._chores.delete(trashed)

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
                self._remove_cgroups(container_id)
        for name in known:
            container = ContainerDir(self._containers / name)
            if container.meta.exists() or container.launched.exists():
                continue
            with contextlib.suppress(FileNotFoundError):
                # an earlier process's parked supervisor (no task for it now); or half-made,
                # unless still being made
                if container.parked.exists():
                    if self._parked_here(container) or not self._end_parked(container):
                        continue
                elif time.time() - container.path.stat().st_mtime <= HALF_MADE_AFTER_S:
                    continue
                self._drop_unused(container)

    def _parked_here(self, container: ContainerDir) -> bool:
        """Whether this process parked (or is parking) that supervisor."""
        try:
            return container.parked.read_text().splitlines()[0] == self._identity
        except (OSError, IndexError):
            return False

    @staticmethod
    def _end_parked(container: ContainerDir) -> bool:
        """End an earlier process's parked supervisor (which ends by itself once it reads that
        its runner is gone: this does not wait for it to notice); whether it has ended."""
        try:
            lines = container.parked.read_text().splitlines()
            pid = int(lines[1]) if len(lines) > 1 else None
            if pid is not None and str(container.path).encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.killpg(pid, signal.SIGKILL)
        except (OSError, ValueError):
            pass  # gone already
        deadline = time.monotonic() + KILL_WAIT_S
        while not _lock_is_free(container.lock):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True


def _process_identity(pid: int) -> str:
    """A process's id and start time: unique for as long as the host runs (a pid alone is
    used again, and a runner in a container may be pid 1 at every start)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return f"{pid} {stat.rsplit(')', 1)[1].split()[19]}"


if TYPE_CHECKING:

    def _is_an_engine(oci: OciEngine) -> Engine:
        """mypy checks here that the OCI backend keeps the engine contract."""
        return oci
