"""Composes the parts into processes: ``up`` (everything), ``server`` (API and housekeeping),
``runner`` (the task runner)."""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import uvicorn

from .api import create_app
from .api.limits import RefusingH11Protocol
from .engine import DockerEngine
from .runner import Runner
from .scheduler import Housekeeper, Scheduler
from .settings import Settings
from .store import Store, open_store

log = logging.getLogger("dockworker")


def configure_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)


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
        signal.signal(signal.SIGINT, self._handle)
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.stop.is_set():
            log.warning("second signal %s: stopping now", signum)
            self.force.set()
        else:
            log.info("signal %s: stopping (again to stop at once)", signum)
            self.stop.set()


def run_service(settings: Settings, *, api: bool, runner: bool, on_ready: str | None = None) -> None:
    store = open_migrated_store(settings)
    if api:
        admin_secret = ensure_admin_token(store)
        if admin_secret is not None:
            # Printed, not logged: log handlers may ship records elsewhere.
            print(admin_token_banner(admin_secret, settings), file=sys.stdout, flush=True)
    stop, force = threading.Event(), threading.Event()
    threads: list[threading.Thread] = []
    the_runner: Runner | None = None
    engine: DockerEngine | None = None
    if runner:
        engine = DockerEngine(settings.docker_host, pool_size=max(16, 4 * settings.slots))
        engine.ping()
        the_runner = Runner(settings, store, engine)
        threads.append(threading.Thread(target=the_runner.run, args=(stop,), name="runner"))
        log.info(
            "runner %s: %d slots, clusters %s",
            the_runner.runner_id,
            settings.slots,
            ",".join(settings.clusters),
        )
    threads.append(
        threading.Thread(target=Housekeeper(settings, store).run, args=(stop,), name="housekeeper")
    )
    if api:
        scheduler = Scheduler(settings, store, on_fire=the_runner.wake if the_runner is not None else None)
        threads.append(threading.Thread(target=scheduler.run, args=(stop,), name="scheduler"))
    # Installed before uvicorn's: it restores them and re-raises the signal it handled.
    _Signals(stop, force).install()
    if the_runner is not None:
        threading.Thread(target=_force_on, args=(force, the_runner), daemon=True).start()
    for thread in threads:
        thread.start()
    try:
        if api:
            _serve_api(settings, store, the_runner, engine, on_ready)
            stop.set()
        elif on_ready:
            log.info("%s", on_ready)
        while not stop.wait(0.5):
            pass
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        if engine is not None:
            engine.close()
        store.close()


def _force_on(force: threading.Event, runner: Runner) -> None:
    force.wait()
    runner.force_stop()


def _serve_api(
    settings: Settings, store: Store, runner: Runner | None, engine: DockerEngine | None, on_ready: str | None
) -> None:
    app = create_app(
        settings,
        store,
        on_enqueue=runner.wake if runner is not None else None,
        image_present=engine.image_exists if engine is not None else None,
    )
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http=RefusingH11Protocol,
        log_level="warning",
        timeout_graceful_shutdown=5,
        access_log=False,
    )
    server = uvicorn.Server(config)
    if on_ready:
        log.info("%s", on_ready)
    server.run()
