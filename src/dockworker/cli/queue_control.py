"""``dockworker schedule|schedules|unschedule|pause|resume``: schedules and queue control."""

from __future__ import annotations

import re
from typing import Annotated, Any

import typer
from rich.table import Column, Table

from ..errors import ClientError
from .client import Client, ClientConfig
from .common import ConfigOpt, JsonOpt, out, read_arg

_DURATION = re.compile(r"^(\d+)\s*([smhd]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> int:
    """'90', '90s', '5m', '2h', '1d' -> seconds."""
    match = _DURATION.match(text.strip().lower())
    if not match:
        raise ClientError(f"cannot read {text!r} as a duration (e.g. 60s, 5m, 2h, 1d)")
    return int(match.group(1)) * _UNITS[match.group(2)]


def _client(config: Any) -> Client:
    return Client(ClientConfig.load(config))


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
    payload: Annotated[str | None, typer.Option(help="Payload of every task, or @file")] = None,
    priority: Annotated[int | None, typer.Option(min=0, max=2)] = None,
    timeout: Annotated[int | None, typer.Option()] = None,
    label: Annotated[str | None, typer.Option()] = None,
    cluster: Annotated[str | None, typer.Option()] = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Schedule a code package: every N seconds or on a cron expression (in a time zone)."""
    if every is not None and cron is not None:
        raise ClientError("give --every or --cron, not both")
    item: dict[str, Any] = {
        "code_name": name,
        "payload": read_arg(payload),
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
    created = _client(config).schedule({k: v for k, v in item.items() if v is not None})
    if as_json:
        out.print_json(data=created)
        return
    out.print(f"Scheduled {created['id']}: {created['description']}")
    for moment in created["next_runs"]:
        out.print(f"  next: {moment}")


def schedules(page: int = 0, per_page: int = 30, config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """List schedules."""
    found = _client(config).schedules(page, per_page)
    if as_json:
        out.print_json(data=found)
        return
    table = Table(Column("id", no_wrap=True, min_width=24), "code", "status", "cadence", "runs", "next start")
    for item in found:
        table.add_row(
            item["id"],
            item["code_name"],
            item["status"],
            item["description"],
            str(item["run_count"]),
            item["next_start"] or "",
        )
    out.print(table)


def unschedule(schedule_id: str, config: ConfigOpt = None) -> None:
    """Cancel a schedule (the tasks it already queued are not touched)."""
    result = _client(config).cancel_schedule(schedule_id)
    out.print(result["msg"])


def pause(name: Annotated[str, typer.Argument(help="Code package name")], config: ConfigOpt = None) -> None:
    """Pause a package's queue: its tasks stay queued, schedules keep firing into it."""
    client = _client(config)
    out.print(client.code_action(client.code_by_name(name)["id"], "pause_task_queue")["msg"])


def resume(name: Annotated[str, typer.Argument(help="Code package name")], config: ConfigOpt = None) -> None:
    """Resume a paused package's queue."""
    client = _client(config)
    out.print(client.code_action(client.code_by_name(name)["id"], "resume_task_queue")["msg"])
