"""``dockworker``: run the service, and use it from the shell."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Column, Table

from .. import __version__
from ..errors import ClientError, DockworkerError
from ..settings import load_settings
from . import admin, queue_control
from .client import Client, ClientConfig, zip_directory
from .common import ConfigOpt, DataDir, JsonOpt, StoreOpt, err, out, parse_env, parse_secret_env, read_arg
from .images import images_app
from .run_local import run_local
from .stacks import stacks_app

app = typer.Typer(
    help="dockworker: one fresh Docker container per task, IronWorker API v2 compatible.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(stacks_app, name="stacks")
app.add_typer(images_app, name="images")
app.command("run-local")(run_local)
admin.register(app)  # projects, token


def _client(config: Path | None) -> Client:
    return Client(ClientConfig.load(config))


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
) -> None:
    """Run a task runner against the store."""
    from ..service import configure_logging, run_service

    configure_logging()
    settings = load_settings(
        data_dir=data_dir,
        store_url=store,
        slots=slots,
        runner_id=runner_id,
        clusters=tuple(cluster) if cluster else None,
        runtime=runtime,
    )
    run_service(settings, api=False, runner=True, on_ready="runner started")


# --- using the service ------------------------------------------------------------------------


@app.command()
def upload(
    directory: Annotated[Path, typer.Argument(help="The worker's directory; zipped and uploaded")],
    name: Annotated[str, typer.Option(help="Code package name (same name = new revision)")],
    command: Annotated[str | None, typer.Option(help="Command to run, e.g. 'python3 hello.py'")] = None,
    stack: Annotated[str | None, typer.Option(help="Stack to run in (see 'dockworker stacks list')")] = None,
    image: Annotated[str | None, typer.Option(help="Docker image to run in instead of a stack")] = None,
    config_value: Annotated[
        str | None, typer.Option("--worker-config", help="Config string, or @file")
    ] = None,
    env: Annotated[list[str] | None, typer.Option("--env", "-e", help="KEY=VALUE (repeatable)")] = None,
    secret_env: Annotated[
        list[str] | None,
        typer.Option("--secret-env", help="KEY=VALUE or KEY=@FILE: never shown by the API (repeatable)"),
    ] = None,
    secret_config: Annotated[
        bool, typer.Option("--secret-config", help="Never show the config through the API")
    ] = False,
    retries: Annotated[int | None, typer.Option(help="Automatic retries on error (max 10)")] = None,
    retries_delay: Annotated[int | None, typer.Option(help="Seconds before a retry")] = None,
    max_concurrency: Annotated[
        int | None, typer.Option(help="Most tasks of this package running at once")
    ] = None,
    memory_mb: Annotated[int | None, typer.Option(help="Memory limit per task, MB")] = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Upload a directory as a code package."""
    if (stack is None) == (image is None):
        raise ClientError("give exactly one of --stack or --image")
    data: dict[str, Any] = {
        "name": name,
        "command": command,
        "stack": stack,
        "image": image,
        "config": read_arg(config_value),
        "env_vars": parse_env(env) or None,
        "secret_env_vars": parse_secret_env(secret_env) or None,
        "config_secret": secret_config or None,
        "retries": retries,
        "retries_delay": retries_delay,
        "max_concurrency": max_concurrency,
        "memory_mb": memory_mb,
    }
    data = {k: v for k, v in data.items() if v is not None}
    archive = zip_directory(directory)
    result = _client(config).upload(data, archive)
    if as_json:
        out.print_json(data=result)
        return
    size = f"{len(archive)} bytes"
    out.print(f"Uploaded [bold]{result['name']}[/] revision {result['rev']} (id {result['id']}, {size})")
    if "warning" in result:
        err.print(f"[yellow]warning:[/] {result['warning']}")


@app.command()
def queue(
    name: Annotated[str, typer.Argument(help="Code package name")],
    payload: Annotated[str | None, typer.Option(help="Payload string (usually JSON), or @file")] = None,
    priority: Annotated[int | None, typer.Option(min=0, max=2)] = None,
    timeout: Annotated[int | None, typer.Option(help="Seconds")] = None,
    delay: Annotated[int | None, typer.Option(help="Seconds before the task may run")] = None,
    label: Annotated[str | None, typer.Option()] = None,
    cluster: Annotated[str | None, typer.Option()] = None,
    count: Annotated[int, typer.Option("-n", "--count", min=1, max=1000, help="How many tasks")] = 1,
    wait: Annotated[
        bool, typer.Option("--wait", help="Follow the log; exit non-zero unless the task completes")
    ] = False,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Queue task(s) for a code package."""
    body: dict[str, Any] = {
        "code_name": name,
        "payload": read_arg(payload) or "",
        "priority": priority,
        "timeout": timeout,
        "delay": delay,
        "label": label,
        "cluster": cluster,
    }
    body = {k: v for k, v in body.items() if v is not None}
    client = _client(config)
    queued = client.queue([body] * count)
    if as_json and not wait:
        out.print_json(data=queued)
        return
    for task in queued:
        (err if wait else out).print(f"Queued task {task['id']}" if wait else task["id"])
    if wait:
        if count != 1:
            raise ClientError("--wait follows one task; use -n 1")
        raise typer.Exit(_follow_until_done(client, queued[0]["id"]))


def _follow_until_done(client: Client, task_id: str) -> int:
    for chunk in client.follow_log(task_id):
        sys.stdout.buffer.write(chunk)
        sys.stdout.buffer.flush()
    task = client.task(task_id)
    while task["status"] in ("queued", "preparing", "running"):
        time.sleep(0.2)
        task = client.task(task_id)
    msg = f": {task['msg']}" if task.get("msg") else ""
    err.print(f"Task {task_id} {task['status']}{msg}")
    return 0 if task["status"] == "complete" else 1


@app.command()
def status(task_id: str, config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Show a task."""
    task = _client(config).task(task_id)
    if as_json:
        out.print_json(data=task)
        return
    for key in (
        "id",
        "code_name",
        "code_rev",
        "status",
        "msg",
        "exit_code",
        "priority",
        "cluster",
        "label",
        "created_at",
        "start_time",
        "end_time",
        "duration",
        "retry_count",
        "original_task_id",
    ):
        if task.get(key) not in (None, ""):
            out.print(f"{key:>16}: {task[key]}")


@app.command()
def log(
    task_id: str,
    follow: Annotated[bool, typer.Option("-f", "--follow", help="Stream until the task ends")] = False,
    config: ConfigOpt = None,
) -> None:
    """Print a task's log (stdout and stderr, interleaved as the engine received them)."""
    client = _client(config)
    if follow:
        for chunk in client.follow_log(task_id):
            sys.stdout.buffer.write(chunk)
            sys.stdout.buffer.flush()
        return
    sys.stdout.write(client.log(task_id))


@app.command()
def tasks(
    code: Annotated[str | None, typer.Option("--code", help="Only this code package")] = None,
    status_filter: Annotated[
        list[str] | None, typer.Option("--status", help="Only these statuses (repeatable)")
    ] = None,
    page: int = 0,
    per_page: Annotated[int, typer.Option(max=100)] = 30,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List tasks, newest first."""
    params: dict[str, Any] = {"page": page, "per_page": per_page}
    if code:
        params["code_name"] = code
    for flag in status_filter or []:
        params[flag] = 1
    found = _client(config).tasks(params)
    if as_json:
        out.print_json(data=found)
        return
    table = Table(Column("id", no_wrap=True, min_width=24), "code", "status", "created", "duration ms", "msg")
    for task in found:
        table.add_row(
            task["id"],
            task["code_name"],
            task["status"],
            task["created_at"],
            str(task["duration"] or ""),
            (task.get("msg") or "")[:60],
        )
    out.print(table)


@app.command()
def cancel(
    target: Annotated[str, typer.Argument(help="Task id, or with --all a code package name")],
    all_tasks: Annotated[
        bool, typer.Option("--all", help="Cancel every queued and running task of NAME")
    ] = False,
    config: ConfigOpt = None,
) -> None:
    """Cancel a task (a running task's container is killed), or with --all every task of a package."""
    client = _client(config)
    if all_tasks:
        result = client.code_action(client.code_by_name(target)["id"], "cancel_all")
        out.print(f"Cancelled {result['cancelled']} queued task(s); stopping {result['stopping']} running")
        return
    result = client.cancel(target)
    out.print(f"{result['msg']} ({result['status']})")


@app.command()
def retry(
    task_id: str,
    delay: Annotated[int, typer.Option(help="Seconds before the new task may run")] = 0,
    config: ConfigOpt = None,
) -> None:
    """Queue a finished task again, as a new task linked to it."""
    task = _client(config).retry(task_id, delay)
    out.print(task["id"])


queue_control.register(app)


def main() -> None:
    try:
        app()
    except DockworkerError as exc:
        err.print(f"[red]error:[/] {exc.message}")
        raise SystemExit(2 if isinstance(exc, ClientError) else 3) from None
