"""``dockworker``: run the service, and use it from the shell.

Exit status: 0 done (also when stdout's reader stopped early, as ``| head -1`` does); 1 a
followed task did not complete; 2 bad input or refused by the service; 3 the infrastructure
failed, or a followed task's end could not be seen; 130 interrupted."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from .. import __version__
from ..errors import ClientError, DockworkerError
from ..settings import load_settings
from . import admin, code_commands, output, queue_control, task_commands
from .common import DataDir, StoreOpt, command_group
from .images import images_app
from .run_local import run_local
from .stacks import stacks_app

out = output.RichOut()  # for the service commands' messages

app = command_group(
    "dockworker: one fresh Docker container per task, IronWorker API v2 compatible.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _version(show: bool) -> None:
    if show:
        output.line(f"dockworker {__version__}")
        raise typer.Exit


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit"),
    ] = False,
) -> None:
    """dockworker: one fresh Docker container per task, IronWorker API v2 compatible."""


# --- running the service ----------------------------------------------------------------------


@app.command()
def up(
    data_dir: DataDir = None,
    store: StoreOpt = None,
    host: Annotated[str | None, typer.Option(help="Address to listen on")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on")] = None,
    slots: Annotated[int | None, typer.Option(help="Concurrent tasks (default: 2 x cores)")] = None,
    runtime: Annotated[
        str | None, typer.Option(help="How tasks run: docker (through dockerd) or oci (crun/runc directly)")
    ] = None,
) -> None:
    """Run everything in one process: API, housekeeping and runner, on SQLite in DATA_DIR."""
    from ..service import Credentials, configure_logging, run_service

    configure_logging()
    settings = load_settings(
        data_dir=data_dir, store_url=store, host=host, port=port, slots=slots, runtime=runtime
    )

    def tell(created: Credentials) -> None:
        out.print(f"[bold]Created project {created.project_id}[/] and a token, written to {created.path}")

    iron_json = settings.data_dir / "iron.json"
    ready = (
        f"dockworker {__version__} listening on http://{settings.host}:{settings.port} "
        f"(API docs at /docs). Credentials: {iron_json}. "
        f"Try: dockworker --help, or point an IronWorker client at {iron_json}"
    )
    run_service(settings, api=True, runner=True, on_ready=ready, on_credentials=tell)


@app.command()
def server(
    data_dir: DataDir = None,
    store: StoreOpt = None,
    host: Annotated[str | None, typer.Option()] = None,
    port: Annotated[int | None, typer.Option()] = None,
) -> None:
    """Run the API server (and lease housekeeping) without a runner."""
    from ..service import configure_logging, run_service

    configure_logging()
    settings = load_settings(data_dir=data_dir, store_url=store, host=host, port=port)
    run_service(settings, api=True, runner=False, on_ready=f"API on http://{settings.host}:{settings.port}")


@app.command()
def runner(
    data_dir: DataDir = None,
    store: StoreOpt = None,
    slots: Annotated[int | None, typer.Option(help="Concurrent tasks (default: 2 x cores)")] = None,
    cluster: Annotated[list[str] | None, typer.Option(help="Take tasks of this cluster (repeatable)")] = None,
    runner_id: Annotated[
        str | None, typer.Option(help="Stable name of this runner (default: host name)")
    ] = None,
    runtime: Annotated[
        str | None, typer.Option(help="How tasks run: docker (through dockerd) or oci (crun/runc directly)")
    ] = None,
    api: Annotated[
        list[str] | None,
        typer.Option(
            help="The API's address (repeatable: tried in turn). The runner then reaches only the API,"
            " with a cluster's token, and no store [env: DOCKWORKER_API, comma-separated]"
        ),
    ] = None,
    cluster_id: Annotated[
        str | None, typer.Option(help="With --api: the cluster whose tasks it runs [env: CLUSTER_ID]")
    ] = None,
    cluster_token: Annotated[
        str | None, typer.Option(help="With --api: the cluster's token [env: CLUSTER_TOKEN]")
    ] = None,
    decryption_key_file: Annotated[
        Path | None,
        typer.Option(
            help="The cluster's private key (PEM), for payloads encrypted end to end"
            " [env: DECRYPTION_KEY_FILE, or the key itself in DECRYPTION_KEY]"
        ),
    ] = None,
) -> None:
    """Run a task runner: against the store (--store, or the data directory's SQLite), or, with
    --api, as a cluster's runner that reaches only the API."""
    from ..service import RemoteRunnerOptions, configure_logging, run_remote_runner, run_service

    configure_logging()
    env = os.environ
    api_urls = tuple(api or [u for u in env.get("DOCKWORKER_API", "").split(",") if u.strip()])
    settings = load_settings(
        data_dir=data_dir,
        store_url=store,
        slots=slots,
        runner_id=runner_id,
        clusters=tuple(cluster) if cluster else None,
        runtime=runtime,
    )
    key = _decryption_key(decryption_key_file)
    if not api_urls:
        if cluster_id or cluster_token:
            raise ClientError(
                "--cluster-id and --cluster-token go with --api URL (a runner that reaches the API)"
            )
        if key is not None:
            raise ClientError("--decryption-key-file is for a cluster's runner: give --api URL too")
        run_service(settings, api=False, runner=True, on_ready="runner started")
        return
    if store:
        raise ClientError("a runner with --api reaches no store: leave out --store")
    options = RemoteRunnerOptions(
        api_urls=api_urls,
        cluster_id=cluster_id or env.get("CLUSTER_ID", ""),
        cluster_token=cluster_token or env.get("CLUSTER_TOKEN", ""),
        name=runner_id or env.get("DOCKWORKER_RUNNER_ID") or None,
        decryption_key=key,
    )
    if not options.cluster_id or not options.cluster_token:
        raise ClientError(
            "a runner with --api needs --cluster-id and --cluster-token (or CLUSTER_ID, CLUSTER_TOKEN)"
        )
    run_remote_runner(settings, options, on_ready=f"runner of cluster {options.cluster_id} started")


def _decryption_key(path: Path | None) -> bytes | None:
    if path is None and os.environ.get("DECRYPTION_KEY_FILE"):
        path = Path(os.environ["DECRYPTION_KEY_FILE"])
    if path is not None:
        try:
            return path.read_bytes()
        except OSError as exc:
            raise ClientError(f"cannot read the decryption key {path}: {exc.strerror}") from None
    inline = os.environ.get("DECRYPTION_KEY")
    return inline.encode() if inline else None


# --- using the service ------------------------------------------------------------------------

code_commands.register(app)  # upload, stats, codes
task_commands.register(app)  # queue, status, log, tasks, events, cancel, retry
queue_control.register(app)  # schedule, schedules, unschedule, pause, resume
admin.register(app)  # projects, token, runners
app.add_typer(stacks_app, name="stacks")
app.add_typer(images_app, name="images")
app.command("run-local")(run_local)


def main() -> None:
    # None: started with the descriptor closed (">&-"): as good as /dev/null.
    sys.stdout = output.ReaderGuard(sys.stdout or open(os.devnull, "w"))  # noqa: SIM115
    sys.stderr = output.QuietWhenGone(sys.stderr or open(os.devnull, "w"))  # noqa: SIM115
    try:
        try:
            app()
        finally:
            sys.stdout.flush()
    except output.ReaderGone:
        output.silence_output()
        raise SystemExit(0) from None
    except DockworkerError as exc:
        output.error(exc.message)
        raise SystemExit(2 if isinstance(exc, ClientError) else 3) from None
