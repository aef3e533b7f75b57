"""Composes the parts into processes: ``up`` (everything), ``server`` (API and housekeeping),
``runner`` (the task runner)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import uvicorn

from .api import create_app
from .api.limits import RefusingH11Protocol
from .engine import Engine
from .engine.oci.choose import open_task_engine
from .errors import ClientError
from .logsetup import configure_logging
from .runner import Runner
from .runner.metering import EngineMeter, MeteredEngine, NoMeter
from .runner.runner import THREAD_JOIN_S, resolve_runner_id
from .scheduler import Housekeeper, Scheduler
from .settings import Settings
from .store import Store, open_store
from .store.identity import FileLock, RunnerIdentity, hold_data_dir

if TYPE_CHECKING:
    from .runner.remote import RemoteLink

log = logging.getLogger("dockworker")

__all__ = ["Credentials", "configure_logging", "ensure_credentials", "open_migrated_store", "run_service"]


def open_migrated_store(settings: Settings) -> Store:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = open_store(settings.database_url)
    store.migrate()
    return store


@dataclass(frozen=True)
class Credentials:
    project_id: str
    token: str
    path: Path


def ensure_credentials(settings: Settings, store: Store) -> Credentials | None:
    """On first start, create a project and a token and write them to ``DATA_DIR/iron.json``
    in the format IronWorker clients read. Returns them when they were just created."""
    path = settings.data_dir / "iron.json"
    if path.exists():
        current = json.loads(path.read_text())
        if (current.get("host"), current.get("port")) != (settings.host, settings.port):
            # Same project and token; clients must find the service where it listens now.
            write_iron_json(path, current["project_id"], current["token"], settings.host, settings.port)
        return None
    project = store.list_projects()[0] if store.list_projects() else store.create_project("default")
    token, _ = store.create_token(project.id, "created by dockworker up")
    write_iron_json(path, project.id, token, settings.host, settings.port)
    return Credentials(project_id=project.id, token=token, path=path)


ADMIN_TOKEN_NAME = "admin (created on first start)"


def ensure_admin_token(store: Store) -> str | None:
    """On first start (the store has never had an admin token), create one. Returns its secret,
    to be shown once: only its digest is stored. None when the store already has one (even a
    revoked one: a lost admin token is replaced with ``dockworker token create --admin``)."""
    if store.list_tokens(None):
        return None
    secret, _ = store.create_token(None, ADMIN_TOKEN_NAME)
    return secret


def admin_token_banner(secret: str, settings: Settings) -> str:
    rule = "=" * 78
    return "\n".join(
        [
            rule,
            "dockworker created an ADMIN TOKEN. It is shown this once and stored nowhere in clear",
            "(the store keeps its SHA-256 digest only). It manages projects and tokens:",
            "",
            f"    {secret}",
            "",
            f"    dockworker projects list --url http://{settings.host}:{settings.port} --admin-token TOKEN",
            "",
            "Lost it? On this host: dockworker token create --admin (with the same --data-dir/--store).",
            rule,
        ]
    )


def write_iron_json(path: Path, project_id: str, token: str, host: str, port: int) -> None:
    config = {"project_id": project_id, "token": token, "host": host, "port": port, "protocol": "http"}
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(config, indent=2) + "\n")
    temporary.chmod(0o600)
    temporary.replace(path)


class _Signals:
    """First SIGINT/SIGTERM: stop gracefully. Second: stop now."""

    def __init__(self, stop: threading.Event, force: threading.Event) -> None:
        self.stop = stop
        self.force = force

    def install(self) -> None:
        signal.signal(signal.SIGINT, self.handle)
        signal.signal(signal.SIGTERM, self.handle)

    def handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.stop.is_set():
            log.warning("service.stopping_now", extra={"signal": signum})
            self.force.set()
        else:
            log.info("service.stopping: again to stop at once", extra={"signal": signum})
            self.stop.set()


class _ApiServer(uvicorn.Server):
    """uvicorn, with its signal handling replaced by the service's: the first signal stops the
    API and the runner together (long-polling streams see ``stop`` and end), the second also
    cuts the API's open connections."""

    def __init__(self, config: uvicorn.Config, signals: _Signals) -> None:
        super().__init__(config)
        self._signals = signals

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._signals.handle(sig, frame)
        self.should_exit = True
        if self._signals.force.is_set():
            self.force_exit = True


def bind_api_socket(settings: Settings) -> socket.socket:
    """The API's listening socket, bound before anything else starts, so that an address in
    use is refused before a runner touches a task."""
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    # IPPROTO_TCP named, not 0: asyncio sets TCP_NODELAY only on sockets whose proto says TCP,
    # and without it every answer written in two parts waits ~40 ms for a delayed ACK (Nagle).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((settings.host, settings.port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise ClientError(
            f"cannot listen on {settings.host}:{settings.port}: {exc.strerror} "
            "(another process uses it? choose another with --port)"
        ) from None
    sock.set_inheritable(False)
    return sock


@dataclass
class _Holds:
    """What a service process holds exclusively, released on the way out."""

    data_dir: FileLock | None = None
    listener: socket.socket | None = None
    identity: RunnerIdentity | None = None

    def release(self) -> None:
        if self.identity is not None:
            self.identity.release()
        if self.listener is not None:
            self.listener.close()
        if self.data_dir is not None:
            self.data_dir.release()


@contextlib.contextmanager
def _exclusive(settings: Settings, *, api: bool, runner: bool) -> Iterator[tuple[_Holds, Store]]:
    """Take, in this order and before anything is written: the data directory (``up`` and
    ``server``), the API's address, the runner's identity; then migrate the store. A second
    process on the same data directory, address or runner id is refused here, having touched
    nothing."""
    holds = _Holds()
    store: Store | None = None
    try:
        if api:
            holds.data_dir = hold_data_dir(settings.data_dir)
            holds.listener = bind_api_socket(settings)
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        store = open_store(settings.database_url)
        if runner:
            holds.identity = store.hold_runner_identity(resolve_runner_id(settings))
        store.migrate()
        yield holds, store
    finally:
        holds.release()
        if store is not None:
            store.close()


def run_service(
    settings: Settings,
    *,
    api: bool,
    runner: bool,
    on_ready: str | None = None,
    on_credentials: Callable[[Credentials], None] | None = None,
) -> None:
    """``on_credentials``: write iron.json (``up``) and tell about a project made on first start."""
    with _exclusive(settings, api=api, runner=runner) as (holds, store):
        if on_credentials is not None:
            created = ensure_credentials(settings, store)
            if created is not None:
                on_credentials(created)
        if api:
            admin_secret = ensure_admin_token(store)
            if admin_secret is not None:
                # Printed, not logged: log handlers may ship records elsewhere.
                print(admin_token_banner(admin_secret, settings), file=sys.stdout, flush=True)
        _serve(settings, store, holds, on_ready)
    log.info("service.stopped")


def _serve(settings: Settings, store: Store, holds: _Holds, on_ready: str | None) -> None:
    stop, force = threading.Event(), threading.Event()
    signals = _Signals(stop, force)
    threads: list[threading.Thread] = []
    the_runner: Runner | None = None
    engine: Engine | None = None
    if holds.identity is not None:
        engine = MeteredEngine(open_task_engine(settings, pool_size=max(16, 4 * settings.slots)))
        engine.ping()
        if holds.listener is None:
            engine.meter = _runner_metrics_port(settings)
        the_runner = Runner(settings, store, engine, identity=holds.identity)
        threads.append(threading.Thread(target=the_runner.run, args=(stop,), name="runner"))
        log.info(
            "runner.starting",
            extra={
                "runner_id": the_runner.runner_id,
                "slots": settings.slots,
                "clusters": ",".join(settings.clusters),
            },
        )
    threads.append(
        threading.Thread(target=Housekeeper(settings, store).run, args=(stop,), name="housekeeper")
    )
    if holds.listener is not None:
        scheduler = Scheduler(settings, store, on_fire=the_runner.wake if the_runner is not None else None)
        threads.append(threading.Thread(target=scheduler.run, args=(stop,), name="scheduler"))
    signals.install()
    if the_runner is not None:
        threading.Thread(target=_force_on, args=(force, the_runner), daemon=True).start()
    for thread in threads:
        thread.start()
    try:
        if holds.listener is not None:
            _serve_api(settings, store, the_runner, engine, holds.listener, signals, on_ready)
            stop.set()
        elif on_ready:
            log.info("%s", on_ready)
        while not stop.wait(0.5):
            pass
    finally:
        stop.set()
        if the_runner is not None:
            the_runner.wake()
        _join_all(threads, settings.shutdown_grace_s + THREAD_JOIN_S + 5.0)
        if engine is not None:
            engine.close()


def _join_all(threads: list[threading.Thread], within_s: float) -> None:
    """Join every thread by one deadline; name those that did not end by then."""
    deadline = time.monotonic() + within_s
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    for thread in threads:
        if thread.is_alive():
            log.warning("service.thread_still_running", extra={"thread_name": thread.name})


def _force_on(force: threading.Event, runner: Runner) -> None:
    force.wait()
    runner.force_stop()


def _serve_api(
    settings: Settings,
    store: Store,
    runner: Runner | None,
    engine: Engine | None,
    listener: socket.socket,
    signals: _Signals,
    on_ready: str | None,
) -> None:
    app = create_app(
        settings,
        store,
        on_enqueue=runner.wake if runner is not None else None,
        image_present=engine.image_exists if engine is not None else None,
        stopping=signals.stop,
        engine_ping=engine.ping if engine is not None else None,
    )
    if isinstance(engine, MeteredEngine):
        engine.meter = app.state.runner_metrics  # the runner's measurements on the API's /metrics
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http=RefusingH11Protocol,
        log_level="warning",
        # uvicorn's records go through the service's handler and format (text or JSON).
        log_config=None,
        timeout_graceful_shutdown=5,
        access_log=False,
    )
    server = _ApiServer(config, signals)
    if on_ready:
        log.info("%s", on_ready)
    server.run(sockets=[listener])


@dataclass(frozen=True, kw_only=True)
class RemoteRunnerOptions:
    """``dockworker runner --api URL --cluster-id ID --cluster-token TOKEN``."""

    api_urls: tuple[str, ...]
    cluster_id: str
    cluster_token: str
    name: str | None = None
    decryption_key: bytes | None = None  # PEM


class TokenRevoked(ClientError):
    """The API refused the cluster token while the runner ran."""


def run_remote_runner(settings: Settings, options: RemoteRunnerOptions, on_ready: str | None = None) -> None:
    """A runner that reaches only the API: no store, no database credentials on its host. It
    stops (TokenRevoked) when the API refuses its token."""
    from . import __version__, payload_crypto
    from .runner.remote import open_remote_link

    key = payload_crypto.load_private_key(options.decryption_key) if options.decryption_key else None
    link = open_remote_link(
        options.api_urls,
        options.cluster_token,
        settings.data_dir,
        name=options.name,
        slots=settings.slots,
        version=__version__,
    )
    identity = link.hold_runner_identity()
    try:
        session = link.session
        if session.cluster_id != options.cluster_id:
            raise ClientError(
                f"the cluster token is the token of cluster {session.cluster_id}, not of {options.cluster_id}"
            )
        if session.encrypted_payloads and key is None:
            raise ClientError(
                f"cluster {session.cluster_name!r} takes encrypted payloads: start its runners with its"
                " private key (--decryption-key-file PATH, or DECRYPTION_KEY)"
            )
        settings = settings.replace(
            clusters=(session.cluster_id,),
            lease_ttl_s=session.lease_ttl_s,
            heartbeat_interval_s=session.heartbeat_interval_s,
            limits=dataclasses.replace(settings.limits, memory_mb=session.memory_mb),
        )
        engine = MeteredEngine(open_task_engine(settings, pool_size=max(16, 4 * settings.slots)))
        try:
            engine.ping()
            engine.meter = _runner_metrics_port(settings)
            runner = Runner(settings, link, engine, identity=identity, payload_key=key)
            _run_until_signalled(runner, settings, link, on_ready)
        finally:
            engine.close()
    finally:
        identity.release()
    if link.refused.is_set():
        raise TokenRevoked(
            "the API refused this runner's cluster token (revoked or rotated): start it with the current one"
        )


def _runner_metrics_port(settings: Settings) -> EngineMeter:
    """The runner's metrics on ``metrics_host:metrics_port`` (when a port is set)."""
    if not settings.metrics_port:
        return NoMeter()
    from .runner.prometheus import serve_runner_metrics

    try:
        meter = serve_runner_metrics(settings.metrics_host, settings.metrics_port)
    except OSError as exc:
        raise ClientError(
            f"cannot serve metrics on {settings.metrics_host}:{settings.metrics_port}: {exc.strerror}"
        ) from None
    log.info(
        "runner.metrics", extra={"url": f"http://{settings.metrics_host}:{settings.metrics_port}/metrics"}
    )
    return meter


def _run_until_signalled(runner: Runner, settings: Settings, link: RemoteLink, on_ready: str | None) -> None:
    stop, force = threading.Event(), threading.Event()
    _Signals(stop, force).install()
    threading.Thread(target=_force_on, args=(force, runner), daemon=True).start()
    thread = threading.Thread(target=runner.run, args=(stop,), name="runner")
    thread.start()
    log.info(
        "runner.starting",
        extra={
            "runner_id": runner.runner_id,
            "slots": settings.slots,
            "clusters": ",".join(settings.clusters),
        },
    )
    if on_ready:
        log.info("%s", on_ready)
    while not stop.wait(0.5):
        if link.refused.is_set():
            log.error("runner.token_refused: stopping; tasks go back to the queue")
            runner.abandon_reports()  # none can be written with this token
            stop.set()
            force.set()
    link.stop_claiming()  # a long poll in flight would hold the stop back
    _join_all([thread], settings.shutdown_grace_s + THREAD_JOIN_S + 5.0)
