"""``dockworker schedule|schedules|unschedule|pause|resume``: schedules and queue control."""

from __future__ import annotations

import re
from typing import Annotated, Any

import typer

from ..errors import ClientError
from . import output
from .client import Client
from .common import ConfigOpt, JsonOpt, Seconds, read_arg
from .output import Col

_DURATION = re.compile(r"^(\d+)\s*([smhd]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> int:
    """'90', '90s', '5m', '2h', '1d' -> seconds."""
    match = _DURATION.match(text.strip().lower())
    if not match:
        raise ClientError(f"cannot read {text!r} as a duration (e.g. 60s, 5m, 2h, 1d)")
    return int(match.group(1)) * _UNITS[match.group(2)]


def register(app: typer.Typer) -> None:
    app.command()(schedule)
    app.command()(schedules)
    app.command()(unschedule)
    app.command()(pause)
    app.command()(resume)


def schedule(
    name: Annotated[str, typer.Argument(help="Code package name")],
    every: Annotated[str | None, typer.Option("--every", help="Run every 60s, 5m, 2h, 1d...")] = None,
    cron: Annotated[
        str | None, typer.Option("--cron", help="Cron expression, e.g. '0 9 * * MON-FRI'")
    ] = None,
    tz: Annotated[
        str | None, typer.Option("--tz", help="IANA time zone for --cron, e.g. Europe/Paris")
    ] = None,
    times: Annotated[int | None, typer.Option("--times", min=1, help="Stop after this many runs")] = None,
    start: Annotated[str | None, typer.Option("--start", help="RFC 3339 time of the first run")] = None,
    end: Annotated[str | None, typer.Option("--end", help="RFC 3339 time after which it stops")] = None,
    payload: Annotated[
        str | None, typer.Option(help="Payload of every task, @file, or - for standard input")
    ] = None,
    priority: Annotated[int | None, typer.Option(min=0, max=2)] = None,
    timeout: Seconds = None,
    label: Annotated[str | None, typer.Option()] = None,
    cluster: Annotated[str | None, typer.Option()] = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Schedule a code package: every N seconds, on a cron expression, or once at --start."""
    if every is not None and cron is not None:
        raise ClientError("give --every or --cron, not both")
    if every is None and cron is None and start is None:
        raise ClientError("give --every or --cron (or --start TIME alone for a single run at that time)")
    item: dict[str, Any] = {
        "code_name": name,
        "payload": read_arg(payload, "--payload", dash_is_stdin=True),
        "run_every": parse_duration(every) if every else None,
        "cron": cron,
        "timezone": tz,
        "run_times": times,
        "start_at": start,
        "end_at": end,
        "priority": priority,
        "timeout": timeout,
        "label": label,
        "cluster": cluster,
    }
    created = Client.configured(config).schedule({k: v for k, v in item.items() if v is not None})
    if as_json:
        output.print_json(created)
        return
    output.line(f"Scheduled {created['id']}: {created['description']}")
    for moment in created["next_runs"]:
        output.line(f"  next: {moment}")


def schedules(
    page: Annotated[int, typer.Option(min=0)] = 0,
    per_page: Annotated[int, typer.Option(min=1, max=100)] = 30,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List schedules.

    Not at a terminal: one schedule a line, tab-separated.
    Fields: id, code, status, runs, next start, cadence."""
    found = Client.configured(config).schedules(page, per_page)
    output.table(
        [
            Col("id", lambda s: s["id"]),
            Col("code", lambda s: s["code_name"]),
            Col("status", lambda s: s["status"]),
            Col("runs", lambda s: s["run_count"], right=True, drop=1),
            Col("next start", lambda s: s["next_start"], drop=2),
            Col("cadence", lambda s: s["description"], flex=True),
        ],
        found,
        as_json=as_json,
    )


def unschedule(schedule_id: str, config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Cancel a schedule (the tasks it already queued are not touched)."""
    _print_msg(Client.configured(config).cancel_schedule(schedule_id), as_json)


def pause(
    name: Annotated[str, typer.Argument(help="Code package name")],
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Pause a package's queue: its tasks stay queued, schedules keep firing into it."""
    client = Client.configured(config)
    _print_msg(client.code_action(client.code_by_name(name)["id"], "pause_task_queue"), as_json)


def resume(
    name: Annotated[str, typer.Argument(help="Code package name")],
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Resume a paused package's queue."""
    client = Client.configured(config)
    _print_msg(client.code_action(client.code_by_name(name)["id"], "resume_task_queue"), as_json)


def _print_msg(answer: dict[str, Any], as_json: bool) -> None:
    if as_json:
        output.print_json(answer)
    else:
        output.line(str(answer.get("msg", "")))
