"""A deployment made of real processes on this machine, for the chaos runs and the multi-host
tests: one PostgreSQL database, API servers and runner processes, the engine's record of
container starts, and the clients. Two kinds of runners:

* attached to the store (``dockworker runner --store URL``), on this host;
* remote (``dockworker runner --api A --api B --cluster-id ID --cluster-token TOKEN``), inside a
  network namespace (``netns.RunnerHost``) that reaches the API servers only, over its veth link;
  the tasks are queued for their cluster.

:meth:`Rig.close` undoes whatever part of the rig was made."""

from __future__ import annotations

import contextlib
import json
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from dockworker.store.postgres import PostgresStore
from tests.pgdb import Databases, libpq_url

from .engine_watch import StartEvents, remove_installation_containers
from .netns import RunnerHost
from .oci_witness import RuntimeStarts, install_wrapper
from .procs import Proc, ProcFailed, said, server_ready
from .support import LOOPBACK, Api, clean_env, dockworker_command, free_port

RUNNER_STOP_S = 30.0
SERVER_STOP_S = 15.0
READY_S = 60.0


def elapsed(since: float) -> str:
    return f"{time.monotonic() - since:7.1f}s"


@dataclass
class Report:
    seed: int
    lines: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def add(self, line: str) -> None:
        self.lines.append(line)

    def fail(self, problem: str) -> None:
        self.failures.append(problem)
        self.lines.append(f"FAILED: {problem}")

    def render(self) -> str:
        return "\n".join(["", f"==== chaos report (DW_CHAOS_SEED={self.seed}) ====", *self.lines, ""])


@dataclass(frozen=True, kw_only=True)
class Timing:
    """The lease settings every process of the rig is given (short: the chaos needs expiries).
    A remote runner takes its lease settings from the API server it talks to."""

    lease_ttl_s: float = 3
    heartbeat_s: float = 1
    shutdown_grace_s: float = 10
    infra_retry_base_delay_s: float = 1

    def env(self) -> dict[str, str]:
        return clean_env(
            DOCKWORKER_LEASE_TTL_S=str(self.lease_ttl_s),
            DOCKWORKER_HEARTBEAT_INTERVAL_S=str(self.heartbeat_s),
            DOCKWORKER_SHUTDOWN_GRACE_S=str(self.shutdown_grace_s),
            DOCKWORKER_INFRA_RETRY_BASE_DELAY_S=str(self.infra_retry_base_delay_s),
        )


class Rig:
    """The database, the processes and the clients of one run (a chaos run, a multi-host
    test). ``remote``: the runners are a cluster's, in that namespace; the API servers listen
    on its link."""

    def __init__(
        self,
        root: Path,
        databases: Databases,
        report: Report,
        *,
        remote: RunnerHost | None = None,
        timing: Timing | None = None,
        slots: int = 2,
        runtime: str = "docker",
    ) -> None:
        self.root = root
        self.report = report
        self.remote = remote
        self.timing = timing or Timing()
        self.slots = slots
        self.api_host = remote.host_ip if remote is not None else LOOPBACK
        self.t0 = time.monotonic()
        self._databases = databases
        self.db_name: str | None = None
        self.store: PostgresStore | None = None
        self.db: psycopg.Connection[tuple[Any, ...]] | None = None
        self.installation_id = ""
        self.project_id = ""
        self.admin_token = ""
        self.project_token = ""
        self.cluster_id = ""
        self.cluster_token = ""
        self.url = ""
        # the runners' --runtime; on "oci" the OCI runtime is the witness (oci_witness.py)
        self.runtime = runtime
        self.events: StartEvents | RuntimeStarts | None = None
        self.servers: list[Proc] = []
        self.runners: list[Proc] = []
        self.apis: list[Api] = []
        self.chaos_log: list[str] = []
        self._closed = False
        self._wrapper_dir = Path()

    def open(self) -> None:
        """A fresh database with a project, and the installation id its runners will use."""
        self.db_name = self._databases.create_empty()
        self.url = self._databases.url(self.db_name)
        self.store = PostgresStore(self.url)
        self.store.migrate()
        self.project_id = self.store.create_project("rig").id
        self.admin_token = self.store.create_token(None, "rig admin")[0]  # GET /2/runners
        self.installation_id = self.store.installation_id()
        self.db = psycopg.connect(libpq_url(self.url), autocommit=True, connect_timeout=5)
        if self.runtime == "oci":
            journal = self.root / "runtime-starts.txt"
            self._wrapper_dir = install_wrapper(self.root / "runtime-witness", journal)
            self.events = RuntimeStarts(journal)
        else:
            self.events = StartEvents(self.root, self.installation_id)

    def note(self, line: str) -> None:
        self.chaos_log.append(f"{elapsed(self.t0)} (epoch {time.time():.3f})  {line}")

    # --- processes ------------------------------------------------------------------------------

    def _project_token(self) -> str:
        """Made through the CLI on the store, as an operator does."""
        result = subprocess.run(
            [*dockworker_command(), "token", "create", "--store", self.url, "--name", "rig"],
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    def start_servers(self, count: int) -> None:
        self.project_token = self._project_token()
        for index in range(count):
            port = free_port()
            argv = [
                *dockworker_command(),
                "server",
                "--store",
                self.url,
                "--data-dir",
                str(self.root / f"server-{index}"),
                "--host",
                self.api_host,
                "--port",
                str(port),
            ]
            ready = server_ready(port, self.api_host)
            proc = Proc(f"server-{index}", argv, self.root / f"server-{index}.log", ready, self.timing.env())
            self.servers.append(proc)
            proc.start()
            self.apis.append(Api(port, self.project_id, self.project_token, host=self.api_host))
        iron = {
            "project_id": self.project_id,
            "token": self.project_token,
            "host": self.api_host,
            "port": self.apis[0].port,
        }
        (self.root / "iron.json").write_text(json.dumps(iron))
        if self.remote is not None:
            self._create_cluster()

    def _create_cluster(self) -> None:
        self.cluster_id, self.cluster_token = self.create_cluster("rig")

    def create_cluster(self, name: str) -> tuple[str, str]:
        """A cluster of the project, made through the API: its id and its token."""
        cluster = self.root_api(self.project_token).post("/2/clusters", {"name": name})["cluster"]
        return str(cluster["id"]), str(cluster["token"])

    def root_api(self, token: str, index: int = 0) -> Api:
        """A client of routes outside the project's path (``/2/clusters``, ``/2/runners``)."""
        api = Api(self.apis[index].port, self.project_id, token, host=self.api_host)
        api.prefix = ""
        return api

    def api_urls(self, indexes: list[int] | None = None) -> list[str]:
        chosen = [self.apis[i] for i in indexes] if indexes is not None else self.apis
        return [f"http://{api.host}:{api.port}" for api in chosen]

    def data_dir(self, runner: str) -> Path:
        return self.root / runner

    def runner(
        self, name: str, *, cluster: tuple[str, str] | None = None, apis: list[int] | None = None
    ) -> Proc:
        """A runner process named ``name`` (not started yet; killed by :meth:`close`): attached
        to the store, or, in a remote rig, a runner of ``cluster`` (id, token; default the
        rig's) in the namespace, given the addresses of ``apis`` (default every server)."""
        data_dir = str(self.data_dir(name))
        if self.remote is None:
            argv = [*dockworker_command(), "runner", "--store", self.url, "--runner-id", name]
            marker = "runner started"
        else:
            cluster_id, token = cluster or (self.cluster_id, self.cluster_token)
            argv = [*dockworker_command(), "runner"]
            for url in self.api_urls(apis):
                argv += ["--api", url]
            argv += ["--cluster-id", cluster_id, "--cluster-token", token, "--runner-id", name]
            marker = f"runner of cluster {cluster_id} started"
        argv = [*argv, "--data-dir", data_dir, "--slots", str(self.slots), "--runtime", self.runtime]
        if self.remote is not None:
            argv = self.remote.command(argv)
        env = self.timing.env()
        if self.runtime == "oci":
            env["PATH"] = f"{self._wrapper_dir}:{env.get('PATH', '')}"
        proc = Proc(name, argv, self.root / f"{name}.log", said(marker), env)
        self.runners.append(proc)
        return proc

    def runner_data_dirs(self) -> list[Path]:
        return [self.data_dir(proc.name) for proc in self.runners]

    def start_runners(self, count: int) -> None:
        for index in range(count):
            self.runner(f"runner-{index}").start()

    def upload(self, name: str, script: str) -> None:
        """A busybox code package ``name`` running ``script``, uploaded through the CLI."""
        directory = self.root / "packages" / name
        directory.mkdir(parents=True)
        (directory / f"{name}.sh").write_text(script)
        result = subprocess.run(
            [
                *dockworker_command(),
                "upload",
                str(directory),
                "--name",
                name,
                "--stack",
                "busybox",
                "--command",
                f"sh {name}.sh",
            ],
            env=clean_env(DOCKWORKER_IRON_JSON=str(self.root / "iron.json")),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        assert result.returncode == 0, result.stderr

    # --- chaos ----------------------------------------------------------------------------------

    def restart(self, proc: Proc, stop: threading.Event) -> None:
        """Start it again; a start that fails (an engine or API not up yet) is tried again."""
        deadline = time.monotonic() + READY_S
        while True:
            try:
                proc.start()
                return
            except ProcFailed:
                if time.monotonic() > deadline or stop.is_set():
                    raise
                self.note(f"{proc.name} did not start; trying again")
                time.sleep(1)

    # --- the database ---------------------------------------------------------------------------

    def query(self, statement: str, *params: Any) -> list[tuple[Any, ...]]:
        assert self.db is not None
        return self.db.execute(statement, params).fetchall()

    def runners_api(self) -> list[dict[str, Any]]:
        """``GET /2/runners``, with an admin token, on a server that is up."""
        index = next(i for i, proc in enumerate(self.servers) if proc.alive())
        found: list[dict[str, Any]] = self.root_api(self.admin_token, index).get("/2/runners")["runners"]
        return found

    def status_counts(self) -> Counter[str]:
        return Counter(
            {
                status: count
                for status, count in self.query("SELECT status, count(*) FROM tasks GROUP BY status")
            }
        )

    # --- the end --------------------------------------------------------------------------------

    def stop_services(self) -> dict[str, int | None]:
        codes: dict[str, int | None] = {}
        for proc in self.runners:
            codes[proc.name] = proc.stop(RUNNER_STOP_S)
        for proc in self.servers:
            codes[proc.name] = proc.stop(SERVER_STOP_S)
        return codes

    def close(self) -> None:
        """Stops everything that is left, whatever happened; idempotent."""
        if self._closed:
            return
        self._closed = True
        with contextlib.ExitStack() as stack:
            if self.db_name is not None:
                stack.callback(self._databases.give_back, self.db_name)
            if self.store is not None:
                stack.callback(self.store.close)
            if self.db is not None:
                stack.callback(self.db.close)
            if self.installation_id:
                stack.callback(remove_installation_containers, self.installation_id)
            if self.events is not None:
                stack.callback(self.events.stop)
            for proc in [*self.servers, *self.runners]:
                stack.callback(proc.kill)
