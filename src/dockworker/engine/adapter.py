"""Wraps the docker SDK's low-level client. Engine errors are classified once, here, into
dockworker's error families; nothing from ``docker`` or ``requests`` escapes this module."""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import logging
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import IO, Any, NoReturn

import docker
import docker.constants
import docker.errors
import requests

from ..errors import ContainerGone, EngineUnavailable, ImageMissing, InfrastructureError, TaskSetupError
from ..names import INSTALLATION_LABEL, TASK_LABEL
from .cgroupfs import CgroupLayout
from .docker_accounting import AccountingParents
from .docker_http import Endpoint, LeanApiClient
from .types import UNKNOWN_USAGE, ContainerInfo, ContainerSpec, ExitInfo, ResourceUsage

log = logging.getLogger("dockworker.engine")

SIGKILL_EXIT = 128 + 9
# The one-stream shell (ContainerSpec.one_stream_shell) inside the container, and what it runs:
# the command found on PATH by hand (busybox's shell would run its own applet of that name
# first), started with its stderr on its stdout. Exit status 127 when it is not found, as an
# engine's init answers.
ONE_STREAM_TARGET = "/.dockworker/busybox"
ONE_STREAM_SCRIPT = r"""c=$1; shift
case $c in
*/*) ;;
*) p=; IFS=:; for d in $PATH; do if [ -f "$d/$c" ] && [ -x "$d/$c" ]; then p=$d/$c; break; fi; done; unset IFS
   if [ -z "$p" ]; then echo "dockworker: $c: command not found" >&2; exit 127; fi; c=$p ;;
esac
exec "$c" "$@" 2>&1"""
IMAGE_START_TTL_S = 5.0
OOM_RECHECKS = 5
OOM_RECHECK_INTERVAL_S = 0.1

# Messages with which the engine reports that the user's command or image cannot run,
# whatever HTTP status it chose for them (dockerd 20.10 answers 400 or 500 for these).
START_ACTION = "start container"
USER_FAULT_MARKERS = (
    "executable file not found",
    "no such file or directory",
    "permission denied",
    "not a directory",
    "exec format error",
    "unable to find user",
    "no matching entries in passwd",
    "invalid reference format",
)


def _explanation(exc: docker.errors.APIError) -> str:
    text = exc.explanation
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return str(text or exc)


def _raise_classified(exc: Exception, action: str) -> NoReturn:
    if isinstance(exc, docker.errors.ImageNotFound):
        raise ImageMissing(f"image not found on the engine: {_explanation(exc)}") from exc
    if isinstance(exc, docker.errors.NotFound):
        raise ContainerGone(f"{action}: {_explanation(exc)}") from exc
    if isinstance(exc, docker.errors.APIError):
        text = _explanation(exc)
        lowered = text.lower()
        # Only the start of the user's command can fail for the user's reasons with a 5xx; a 5xx
        # elsewhere (e.g. create while the engine shuts down) is the engine's problem.
        if action == START_ACTION and any(marker in lowered for marker in USER_FAULT_MARKERS):
            raise TaskSetupError(f"{action}: {text}") from exc
        if exc.is_client_error():
            raise TaskSetupError(f"{action}: {text}") from exc
        raise InfrastructureError(f"{action}: engine error {exc.status_code}: {text}") from exc
    cause = exc.__cause__ or exc.__context__
    unreachable = (requests.exceptions.ConnectionError, ConnectionError, FileNotFoundError)
    if isinstance(exc, unreachable) or isinstance(cause, unreachable):
        raise EngineUnavailable(f"{action}: Docker engine unreachable: {exc}") from exc
    raise InfrastructureError(f"{action}: {type(exc).__name__}: {exc}") from exc


def _close_stream(stream: Any) -> None:
    """Close an attach stream for good. The SDK's close() shuts the socket but leaves the
    file object the HTTP response reads through, which keeps the descriptor open."""
    response = getattr(stream, "_response", None)
    with contextlib.suppress(Exception):
        stream.close()
    if response is not None:
        with contextlib.suppress(Exception):
            response.raw._fp.fp.raw.close()
        with contextlib.suppress(Exception):
            response.close()


@contextlib.contextmanager
def _classified(action: str) -> Iterator[None]:
    try:
        yield
    except (
        docker.errors.DockerException,
        requests.exceptions.RequestException,
        http.client.HTTPException,
        OSError,
    ) as exc:
        _raise_classified(exc, action)


def _engine_time(text: str) -> float | None:
    """The engine's RFC 3339 times have nanoseconds, and 0001-01-01 for "never"."""
    if not text or text.startswith("0001-"):
        return None
    main, _, fraction = text.rstrip("Z").partition(".")
    micros = (fraction + "000000")[:6]
    return datetime.fromisoformat(f"{main}.{micros}+00:00").timestamp()


def _check_unix_socket(base_url: str) -> None:
    # The SDK leaks its socket when connecting to a Unix socket fails; find out first.
    if not base_url.startswith(("unix://", "/")):
        return
    path = base_url.removeprefix("unix://")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(5)
        probe.connect(path)
    except OSError as exc:
        raise EngineUnavailable(f"connect: Docker engine unreachable at {path}: {exc}") from exc
    finally:
        probe.close()


class DockerEngine:
    """One engine connection, implementing :class:`~dockworker.engine.base.Engine` (plus the
    image building the stack builders need). Thread-safe: the runner's task threads share it."""

    def __init__(self, base_url: str | None = None, *, pool_size: int = 32, timeout: float = 60) -> None:
        self._base_url = base_url or docker.constants.DEFAULT_UNIX_SOCKET
        version = self._negotiate_version(self._base_url)
        with _classified("connect"):
            client = LeanApiClient if Endpoint.supported(self._base_url) else docker.APIClient
            self._api = client(
                base_url=self._base_url, version=version, timeout=int(timeout), max_pool_size=pool_size
            )
            # Attach streams stay open for the whole task: no read timeout on them.
            self._streams = docker.APIClient(
                base_url=self._base_url,
                version=self._api.api_version,
                timeout=None,  # type: ignore[arg-type]
                max_pool_size=pool_size,
            )
        self._init_state()

    def _init_state(self) -> None:
        """What the adapter keeps besides its clients (separate, for tests that bring a client)."""
        self._accounting_lock = threading.Lock()
        self._accounting_checked = False
        self._parents: AccountingParents | None = None
        # container id -> the parent cgroup it was created under (by this adapter), so that
        # reading its usage and removing it need no inspect; others are inspected.
        self._parent_of: dict[str, str] = {}
        self._installations: set[str] = set()  # those with parents made here, tidied on close
        self._image_starts: dict[str, tuple[float, list[str], list[str]]] = {}

    @staticmethod
    def _negotiate_version(base_url: str) -> str:
        """The engine's API version. Asked through a client of our own so that a failure does
        not leave the SDK's half-built client (and its socket) behind."""
        _check_unix_socket(base_url)
        probe = docker.APIClient(
            base_url=base_url, version=docker.constants.MINIMUM_DOCKER_API_VERSION, timeout=10
        )
        try:
            with _classified("connect"):
                return str(probe.version(api_version=False)["ApiVersion"])
        finally:
            probe.close()

    def close(self) -> None:
        if self._parents is not None:
            for installation in list(self._installations):  # a copy: task threads may add
                self._parents.tidy(installation)
        self._api.close()
        self._streams.close()

    def ping(self) -> None:
        with _classified("ping"):
            self._api.ping()

    def image_exists(self, ref: str) -> bool:
        try:
            with _classified("inspect image"):
                self._api.inspect_image(ref)  # type: ignore[no-untyped-call]
        except (TaskSetupError, ContainerGone):
            return False
        return True

    def image_labels(self, ref: str) -> dict[str, str] | None:
        """The image's labels, or None when there is no such image."""
        try:
            with _classified("inspect image"):
                data = self._api.inspect_image(ref)  # type: ignore[no-untyped-call]
        except (TaskSetupError, ContainerGone):
            return None
        labels = (data.get("Config") or {}).get("Labels") or {}
        return dict(labels)

    def image_id(self, ref: str) -> str | None:
        """The image's id (``sha256:...``), or None when there is no such image."""
        try:
            with _classified("inspect image"):
                data = self._api.inspect_image(ref)  # type: ignore[no-untyped-call]
        except (TaskSetupError, ContainerGone):
            return None
        return str(data["Id"])

    def image_size(self, ref: str) -> int | None:
        try:
            with _classified("inspect image"):
                data = self._api.inspect_image(ref)  # type: ignore[no-untyped-call]
        except (TaskSetupError, ContainerGone):
            return None
        return int(data.get("Size") or 0)

    def import_image(self, tar: IO[bytes], *, repository: str, tag: str, changes: list[str]) -> None:
        """Create an image from a root filesystem tarball (``docker import``)."""
        with _classified("import image"):
            # The SDK's import_image posts the data with the client-wide timeout.
            result = self._streams.import_image_from_data(
                tar, repository=repository, tag=tag, changes=changes
            )
        if isinstance(result, str) and '"error"' in result:
            raise InfrastructureError(f"import image: {result.strip()}")

    def build_image(self, context: IO[bytes], *, tag: str) -> None:
        """Build an image from a tar build context holding a Dockerfile (``docker build``).
        Nothing is pulled: the base image must be on the engine; RUN steps get no network."""
        with _classified("build image"):
            events = self._streams.build(
                fileobj=context,
                custom_context=True,
                tag=tag,
                pull=False,
                rm=True,
                forcerm=True,
                network_mode="none",
                decode=True,
            )
            for event in events:
                if isinstance(event, dict) and event.get("error"):
                    raise TaskSetupError(f"build image {tag}: {str(event['error']).strip()}")

    def export_image(self, ref: str) -> Iterator[bytes]:
        """The image as ``docker save`` writes it (a tar of its layers, config and manifest),
        streamed; iteration errors are classified too."""
        with _classified("export image"):
            stream = self._streams.get_image(ref)
        return self._classified_stream(stream)

    def engine_version(self) -> str:
        """The engine's own version (e.g. ``20.10.24+dfsg1``)."""
        with _classified("engine version"):
            return str(self._api.version(api_version=False)["Version"])

    def remove_image(self, ref: str, *, force: bool = True) -> None:
        """Remove the image (force: even when stopped containers use it, or it has other tags)."""
        with _classified("remove image"):
            self._api.remove_image(ref, force=force)

    def _accounting(self) -> AccountingParents | None:
        """The per-task parent cgroups (docker_accounting.py), once the engine's cgroup driver
        is known to allow them; None when usage cannot be recorded with this engine."""
        with self._accounting_lock:
            if not self._accounting_checked:
                with _classified("engine info"):
                    info = self._api.info()
                driver = str(info.get("CgroupDriver") or "")
                if driver == "cgroupfs":
                    self._parents = AccountingParents(CgroupLayout.detect())
                else:
                    log.warning(
                        "engine.usage_unavailable: task usage is recorded with the cgroupfs cgroup "
                        "driver only",
                        extra={"cgroup_driver": driver or "unknown"},
                    )
                self._accounting_checked = True
            return self._parents

    def _make_parent(self, spec: ContainerSpec) -> str | None:
        installation, task_id = spec.labels.get(INSTALLATION_LABEL), spec.labels.get(TASK_LABEL)
        parents = self._accounting()
        if parents is None or not installation or not task_id:
            return None
        self._installations.add(installation)
        return parents.create(installation, task_id)

    def create(self, spec: ContainerSpec) -> str:
        binds: dict[str, Mapping[str, str]] = {
            b.source: {"bind": b.target, "mode": "ro" if b.read_only else "rw"} for b in spec.binds
        }
        if spec.one_stream_shell is not None:
            spec = self._one_stream(spec, binds)
        parent = self._make_parent(spec)
        try:
            container_id = self._create(spec, binds, parent)
        except BaseException:
            if parent is not None and self._parents is not None:
                self._parents.remove(parent)
            raise
        if parent is not None:
            self._parent_of[container_id] = parent
        return container_id

    def _create(self, spec: ContainerSpec, binds: dict[str, Mapping[str, str]], parent: str | None) -> str:
        with _classified("create container"):
            host_config = self._api.create_host_config(
                binds=binds,
                mem_limit=spec.memory_bytes,
                memswap_limit=spec.memory_bytes,
                nano_cpus=int(spec.cpus * 1e9),
                pids_limit=spec.pids,
                read_only=spec.read_only_root,
                tmpfs=spec.tmpfs,
                cap_drop=["ALL"],
                security_opt=["no-new-privileges"],
                init=True,
                log_config=docker.types.LogConfig(
                    type="json-file", config={"max-size": str(spec.log_max_bytes + 65536), "max-file": "1"}
                ),
                cgroup_parent=parent,
            )
            created = self._api.create_container(
                spec.image,
                spec.command,
                entrypoint=spec.entrypoint,
                environment=spec.env,
                labels=spec.labels,
                working_dir=spec.working_dir,
                user=spec.user,
                host_config=host_config,
                network_disabled=spec.network_disabled,
                stdin_open=False,
                tty=False,
            )
        return str(created["Id"])

    def _one_stream(self, spec: ContainerSpec, binds: dict[str, Mapping[str, str]]) -> ContainerSpec:
        """The spec with its command started by the mounted static shell, stderr on stdout. The
        image's own entrypoint and default command run as Docker would have run them."""
        entrypoint, default = self._image_start(spec.image)
        argv = [*entrypoint, *(spec.command or default)]
        if not argv or spec.one_stream_shell is None:
            return spec  # nothing to start: let the engine say so
        binds[spec.one_stream_shell] = {"bind": ONE_STREAM_TARGET, "mode": "ro"}
        return dataclasses.replace(
            spec, entrypoint=[ONE_STREAM_TARGET, "sh", "-c", ONE_STREAM_SCRIPT, "dockworker"], command=argv
        )

    def _image_start(self, ref: str) -> tuple[list[str], list[str]]:
        """The image's Entrypoint and Cmd, asked of the engine at most every few seconds per
        reference (a create must not pay an inspect each time)."""
        now = time.monotonic()
        cached = self._image_starts.get(ref)
        if cached is not None and now - cached[0] < IMAGE_START_TTL_S:
            return cached[1], cached[2]
        try:
            with _classified("inspect image"):
                config = self._api.inspect_image(ref).get("Config") or {}  # type: ignore[no-untyped-call]
        except ImageMissing:
            return [], []  # the create that follows says so, as it always has
        found = (now, list(config.get("Entrypoint") or []), list(config.get("Cmd") or []))
        self._image_starts[ref] = found
        return found[1], found[2]

    def attach(self, container_id: str) -> Iterator[bytes]:
        """Stdout and stderr, interleaved in the order the engine received them. Call before
        :meth:`start` so nothing is missed. Iteration errors are classified too."""
        with _classified("attach"):
            if isinstance(self._api, LeanApiClient):
                stream = self._api.attach_stream(container_id, timeout=self._api.timeout)
            else:
                stream = self._streams.attach(container_id, stdout=True, stderr=True, stream=True, logs=False)
        return self._classified_stream(stream)

    def follow_logs(self, container_id: str) -> Iterator[bytes]:
        """A running container's output from its beginning, then live until it exits (used to
        re-adopt a container after a runner restart)."""
        with _classified("follow logs"):
            stream = self._streams.logs(container_id, stdout=True, stderr=True, stream=True, follow=True)
        return self._classified_stream(stream)

    def started_at(self, container_id: str) -> float | None:
        """When the container's process was started (epoch seconds), or None if it never was."""
        with _classified("inspect container"):
            state = self._api.inspect_container(container_id)["State"]
        return _engine_time(str(state.get("StartedAt") or ""))

    def memory_limit(self, container_id: str) -> int:
        with _classified("inspect container"):
            host_config = self._api.inspect_container(container_id)["HostConfig"]
        return int(host_config.get("Memory") or 0)

    @staticmethod
    def _classified_stream(stream: Any) -> Iterator[bytes]:
        try:
            with _classified("read output"):
                yield from stream
        finally:
            _close_stream(stream)

    def start(self, container_id: str) -> None:
        with _classified(START_ACTION):
            self._api.start(container_id)

    def wait(self, container_id: str, timeout: float = 30) -> ExitInfo:
        """Wait for the container to exit (it should already have) and read its outcome."""
        with _classified("wait container"):
            result = self._api.wait(container_id, timeout=int(max(1, timeout)))
            if result.get("StatusCode") == 0:
                # Complete whatever else the state says (an OOM kill ends in 137): no inspect.
                return ExitInfo(exit_code=0, oom_killed=False)
            state = self._api.inspect_container(container_id)["State"]
            exit_code = int(result.get("StatusCode", state.get("ExitCode", -1)))
            # Under load the engine may record the exit before the kernel's OOM event: a SIGKILL
            # exit without the flag is looked at again before it is called anything but OOM.
            for _ in range(OOM_RECHECKS):
                if exit_code != SIGKILL_EXIT or state.get("OOMKilled"):
                    break
                time.sleep(OOM_RECHECK_INTERVAL_S)
                state = self._api.inspect_container(container_id)["State"]
        return ExitInfo(
            exit_code=exit_code,
            oom_killed=bool(state.get("OOMKilled")),
            error=str(state.get("Error") or ""),
        )

    def kill(self, container_id: str) -> None:
        """SIGKILL the container; returns once it has exited. A container already gone is fine."""
        try:
            with _classified("kill container"):
                self._api.kill(container_id)
        except ContainerGone:
            return
        except TaskSetupError as exc:  # 409: "is not running"
            if "not running" not in str(exc):
                raise

    def _cgroup_parent(self, container_id: str) -> str:
        known = self._parent_of.get(container_id)
        if known is not None:
            return known
        with _classified("inspect container"):
            host_config = self._api.inspect_container(container_id)["HostConfig"]
        return str(host_config.get("CgroupParent") or "")

    def usage(self, container_id: str) -> ResourceUsage:
        """Read from the container's parent cgroup (docker_accounting.py): the container's own
        is gone once it has exited, the parent keeps the counts."""
        parents = self._accounting()
        if parents is None:
            return UNKNOWN_USAGE
        return parents.usage(self._cgroup_parent(container_id))

    def remove(self, container_id: str) -> None:
        """Remove the container, and then its parent cgroup (which a container still alive
        keeps busy: the reaper tries again)."""
        parents = self._accounting()
        try:
            parent = self._cgroup_parent(container_id) if parents is not None else ""
            with _classified("remove container"):
                self._api.remove_container(container_id, force=True, v=True)
        except ContainerGone:
            self._parent_of.pop(container_id, None)
            return
        except TaskSetupError as exc:  # 409: removal already in progress
            if "already in progress" not in str(exc):
                raise
            return
        self._parent_of.pop(container_id, None)
        if parents is not None:
            parents.remove(parent)

    def accounted_tasks(self, installation_id: str) -> set[str]:
        parents = self._accounting()
        return set() if parents is None else parents.task_ids(installation_id)

    def release_accounting(self, installation_id: str, task_id: str) -> bool:
        parents = self._accounting()
        return True if parents is None else parents.release(installation_id, task_id)

    def list_labelled(self, label: str = TASK_LABEL) -> list[ContainerInfo]:
        with _classified("list containers"):
            found = self._api.containers(all=True, filters={"label": label})
        return [ContainerInfo(id=c["Id"], labels=dict(c.get("Labels") or {})) for c in found]
