"""``dockworker queue|status|log|tasks|events|cancel|retry``: tasks."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from ..errors import ClientError
from ..states import TaskStatus
from . import output
from .client import Client
from .cluster_commands import cluster_id_for, encrypt_for
from .common import ConfigOpt, JsonOpt, Seconds, read_arg
from .follow import follow_to_end
from .output import Col, show_bytes, show_milliseconds

STATUS_KEYS = (
    "id",
    "code_name",
    "code_rev",
    "status",
    "percent",
    "msg",
    "exit_code",
    "priority",
    "cluster",
    "label",
    "created_at",
    "start_time",
    "end_time",
    "duration",
    "cpu_time_ms",
    "peak_memory_bytes",
    "retry_count",
    "original_task_id",
    "retry_task_id",
    "schedule_id",
)
# At a terminal: these in human units (plain output and --json keep the API's integers).
HUMAN_UNITS = {
    "duration": show_milliseconds,
    "cpu_time_ms": show_milliseconds,
    "peak_memory_bytes": show_bytes,
}
STATUSES = tuple(status.value for status in TaskStatus)


def register(app: typer.Typer) -> None:
    for command in (queue, status, log, tasks, events, cancel, retry):
        app.command()(command)


def queue(
    name: Annotated[str, typer.Argument(help="Code package name")],
    payload: Annotated[
        str | None, typer.Option(help="Payload string (usually JSON), @file, or - for standard input")
    ] = None,
    priority: Annotated[int | None, typer.Option(min=0, max=2)] = None,
    timeout: Seconds = None,
    delay: Annotated[int | None, typer.Option(min=0, help="Seconds before the task may run")] = None,
    label: Annotated[str | None, typer.Option()] = None,
    cluster: Annotated[
        str | None, typer.Option(help="The cluster (its id, or the name of one of yours) that runs it")
    ] = None,
    encrypt: Annotated[
        bool, typer.Option("--encrypt", help="Encrypt the payload for the cluster's runners (its public key)")
    ] = False,
    count: Annotated[int, typer.Option("-n", "--count", min=1, max=1000, help="How many tasks")] = 1,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait",
            help="Follow the log to the end; exit 0 only if the task completes (with --json: "
            "the log goes to stderr, the task's JSON to stdout)",
        ),
    ] = False,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Queue task(s) for a code package. Prints the task id (one a line with -n)."""
    if wait and count != 1:
        raise ClientError("--wait follows one task: drop -n, or drop --wait")
    text = read_arg(payload, "--payload", dash_is_stdin=True) or ""
    if cluster is not None:
        cluster = cluster_id_for(config, cluster)
    if encrypt:
        if cluster is None:
            raise ClientError("--encrypt encrypts for a cluster's runners: give --cluster")
        text = encrypt_for(config, cluster, text)
    body: dict[str, Any] = {
        "code_name": name,
        "payload": text,
        "priority": priority,
        "timeout": timeout,
        "delay": delay,
        "label": label,
        "cluster": cluster,
    }
    client = Client.configured(config)
    queued = client.queue([{k: v for k, v in body.items() if v is not None}] * count)
    if wait:
        output.note(f"Queued task {queued[0]['id']}")
        code, task = follow_to_end(client, queued[0]["id"], sys.stderr.buffer if as_json else None)
        if as_json and task is not None:
            output.print_json(task)
        raise typer.Exit(code)
    if as_json:
        output.print_json(queued)
        return
    for task in queued:
        output.line(f"Queued task {task['id']} ({name})" if output.stdout_is_terminal() else task["id"])


def status(
    task_id: str,
    wait: Annotated[
        float | None,
        typer.Option(
            "--wait",
            min=0,
            max=60,
            metavar="SECONDS",
            help="Wait up to SECONDS (at most 60) for the task to end; then show it as it is",
        ),
    ] = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show a task."""
    task = Client.configured(config).task(task_id, wait_s=wait)
    output.fields(task, STATUS_KEYS, as_json=as_json, human=HUMAN_UNITS)


def log(
    task_id: str,
    follow: Annotated[
        bool,
        typer.Option(
            "-f",
            "--follow",
            help="Stream until the task ends, then print its status; exit 0 only if "
            "it completes (with --json: the log goes to stderr, the task's JSON to stdout)",
        ),
    ] = False,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Print a task's log (stdout and stderr, interleaved as the engine received them)."""
    client = Client.configured(config)
    if follow:
        code, task = follow_to_end(client, task_id, sys.stderr.buffer if as_json else None)
        if as_json and task is not None:
            output.print_json(task)
        raise typer.Exit(code)
    text = client.log(task_id)
    if as_json:
        output.print_json({"id": task_id, "log": text})
        return
    sys.stdout.write(text)


def tasks(
    code: Annotated[str | None, typer.Option("--code", help="Only this code package")] = None,
    status_filter: Annotated[
        list[str] | None,
        typer.Option("--status", help=f"Only these statuses (repeatable): {', '.join(STATUSES)}"),
    ] = None,
    page: Annotated[int, typer.Option(min=0)] = 0,
    per_page: Annotated[int, typer.Option(min=1, max=100)] = 30,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List tasks, newest first.

    Not at a terminal: one task a line, tab-separated.
    Fields: id, code, status, created, duration ms, msg."""
    params: dict[str, Any] = {"page": page, "per_page": per_page}
    if code:
        params["code_name"] = code
    for wanted in status_filter or []:
        if wanted not in STATUSES:
            raise ClientError(f"--status {wanted!r} is not a task status: use one of {', '.join(STATUSES)}")
        params[wanted] = 1
    found = Client.configured(config).tasks(params)
    output.table(
        [
            Col("id", lambda t: t["id"]),
            Col("code", lambda t: t["code_name"]),
            Col("status", lambda t: t["status"]),
            Col("created", lambda t: t["created_at"], drop=2),
            Col("duration ms", lambda t: t["duration"], drop=1, right=True),
            Col("msg", lambda t: t.get("msg"), flex=True, min_width=20),
        ],
        found,
        as_json=as_json,
    )


def events(task_id: str, config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """A task's history: queued, claimed, started, retried, finished..., oldest first."""
    found = Client.configured(config).events(task_id)
    output.table(
        [
            Col("at", lambda e: e["at"]),
            Col("kind", lambda e: e["kind"]),
            Col("detail", lambda e: e["detail"], flex=True),
        ],
        found,
        as_json=as_json,
    )


def cancel(
    target: Annotated[str, typer.Argument(help="Task id, or with --all a code package name")],
    all_tasks: Annotated[
        bool, typer.Option("--all", help="Cancel every queued and running task of NAME")
    ] = False,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Cancel a task (a running task's container is killed), or with --all every task of a package."""
    client = Client.configured(config)
    if all_tasks:
        result = client.code_action(client.code_by_name(target)["id"], "cancel_all")
        if as_json:
            output.print_json(result)
            return
        output.line(f"Cancelled {result['cancelled']} queued task(s); stopping {result['stopping']} running")
        return
    result = client.cancel(target)
    if as_json:
        output.print_json(result)
        return
    output.line(f"{result['msg']} ({result['status']})")


def retry(
    task_id: str,
    delay: Annotated[int, typer.Option(min=0, help="Seconds before the new task may run")] = 0,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Queue a finished task again, as a new task linked to it. Prints the new task's id."""
    task = Client.configured(config).retry(task_id, delay)
    if as_json:
        output.print_json(task)
        return
    output.line(task["id"])
