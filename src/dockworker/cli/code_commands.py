"""``dockworker upload``, ``dockworker codes list|show|revisions|download|delete``, ``dockworker
stats``: code packages."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import ClientError
from . import output
from .bundle import IGNORE_FILE, included_files, zip_directory
from .client import Client
from .common import (
    CommandOpt,
    ConfigOpt,
    EnvOpt,
    FileNameOpt,
    ImageOpt,
    JsonOpt,
    RuntimeOpt,
    StackOpt,
    command_group,
    parse_env,
    parse_secret_env,
    read_arg,
)
from .output import Col

codes_app = command_group("Code packages: list, show, revisions, download, delete.", no_args_is_help=True)

CODE_KEYS = (
    "id",
    "name",
    "rev",
    "stack",
    "runtime",
    "image",
    "command",
    "file_name",
    "code_size",
    "latest_checksum",
    "paused",
    "max_concurrency",
    "retries",
    "retries_delay",
    "default_priority",
    "memory_mb",
    "cpus",
    "pids",
    "env_vars",
    "secret_env_vars",
    "config",
    "created_at",
    "updated_at",
)
STATS_KEYS = ("queued", "preparing", "running", "complete", "error", "cancelled", "killed", "timeout")


def register(app: typer.Typer) -> None:
    app.command()(upload)
    app.command()(stats)
    app.add_typer(codes_app, name="codes")


def _where(code: dict[str, Any]) -> str:
    return str(code.get("image") or code.get("stack") or code.get("runtime") or "")


def upload(
    name: Annotated[str, typer.Option(help="Code package name (same name = new revision)")],
    directory: Annotated[
        Path | None,
        typer.Argument(help=f"The worker's directory, zipped (less what its {IGNORE_FILE} names)"),
    ] = None,
    command: CommandOpt = None,
    stack: StackOpt = None,
    image: ImageOpt = None,
    runtime: RuntimeOpt = None,
    file_name: FileNameOpt = None,
    config_value: Annotated[
        str | None, typer.Option("--worker-config", help="Config string, @file, or @- for standard input")
    ] = None,
    env: EnvOpt = None,
    secret_env: Annotated[
        list[str] | None,
        typer.Option("--secret-env", help="KEY=VALUE or KEY=@FILE: never shown by the API (repeatable)"),
    ] = None,
    secret_config: Annotated[
        bool, typer.Option("--secret-config", help="Never show the config through the API")
    ] = False,
    retries: Annotated[int | None, typer.Option(min=0, max=10, help="Automatic retries on error")] = None,
    retries_delay: Annotated[int | None, typer.Option(min=0, help="Seconds before a retry")] = None,
    max_concurrency: Annotated[
        int | None, typer.Option(min=1, help="Most tasks of this package running at once")
    ] = None,
    default_priority: Annotated[int | None, typer.Option(min=0, max=2)] = None,
    memory_mb: Annotated[int | None, typer.Option(min=16, help="Memory limit per task, MB")] = None,
    cpus: Annotated[float | None, typer.Option(min=0.01, help="CPUs per task")] = None,
    pids: Annotated[int | None, typer.Option(min=16, help="Most processes per task")] = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Upload a directory as a code package.

    It runs in a stack with --command, a legacy --runtime with --file-name, or an --image.
    An --image package may have no directory."""
    data: dict[str, Any] = {
        "name": name,
        "command": command,
        "stack": stack,
        "image": image,
        "runtime": runtime,
        "file_name": file_name,
        "config": read_arg(config_value, "--worker-config"),
        "env_vars": parse_env(env) or None,
        "secret_env_vars": parse_secret_env(secret_env) or None,
        "config_secret": secret_config or None,
        "retries": retries,
        "retries_delay": retries_delay,
        "max_concurrency": max_concurrency,
        "default_priority": default_priority,
        "memory_mb": memory_mb,
        "cpus": cpus,
        "pids": pids,
    }
    _check_launch(directory, stack=stack, image=image, runtime=runtime, command=command, file_name=file_name)
    archive = zip_directory(directory) if directory is not None else None
    result = Client.configured(config).upload({k: v for k, v in data.items() if v is not None}, archive)
    if as_json:
        output.print_json(result)
        return
    size = f", {len(archive)} bytes" if archive is not None else ", no code"
    output.line(f"Uploaded {result['name']} revision {result['rev']} (id {result['id']}{size})")
    if "warning" in result:
        output.warn(str(result["warning"]))


def _check_launch(directory: Path | None, **launch: str | None) -> None:
    """The service's own check of how a package starts, with the CLI's option names, before
    anything is zipped or sent."""
    from ..runner.contract import check_launch

    check_launch(**launch, option=lambda field: "--" + field.replace("_", "-"))
    if directory is None:
        if not launch["image"]:
            raise ClientError("give the worker's DIRECTORY (only an --image package may go without code)")
        return
    file_name = launch["file_name"]
    if file_name and file_name not in {name for _, name in included_files(directory)}:
        raise ClientError(
            f"--file-name {file_name!r} is not a file in {directory} (or {IGNORE_FILE} leaves it out)"
        )


@codes_app.command("list")
def codes_list(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """List the code packages.

    Not at a terminal: one package a line, tab-separated.
    Fields: id, name, rev, stack or image, command, paused, updated."""
    found = Client.configured(config).codes()
    output.table(
        [
            Col("id", lambda c: c["id"]),
            Col("name", lambda c: c["name"]),
            Col("rev", lambda c: c["rev"], right=True),
            Col("runs in", _where, drop=3),
            Col("command", lambda c: c.get("command") or c.get("file_name"), flex=True),
            Col("paused", lambda c: c["paused"], drop=1),
            Col("updated", lambda c: c["updated_at"], drop=2),
        ],
        found,
        as_json=as_json,
    )


@codes_app.command("show")
def codes_show(
    name: Annotated[str, typer.Argument(help="Code package name")],
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """A code package's latest revision and settings (secrets are never shown)."""
    code = Client.configured(config).code_by_name(name)
    output.fields(code, CODE_KEYS, as_json=as_json)


@codes_app.command("revisions")
def codes_revisions(
    name: Annotated[str, typer.Argument(help="Code package name")],
    page: Annotated[int, typer.Option(min=0)] = 0,
    per_page: Annotated[int, typer.Option(min=1, max=100)] = 30,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """A code package's revisions, newest first."""
    client = Client.configured(config)
    found = client.revisions(client.code_by_name(name)["id"], page, per_page)
    output.table(
        [
            Col("id", lambda r: r["id"]),
            Col("rev", lambda r: r["rev"], right=True),
            Col("created", lambda r: r["created_at"]),
            Col("bytes", lambda r: r["code_size"], right=True, drop=1),
            Col("command", lambda r: r.get("command") or r.get("file_name"), flex=True),
        ],
        found,
        as_json=as_json,
    )


@codes_app.command("download")
def codes_download(
    name: Annotated[str, typer.Argument(help="Code package name")],
    revision: Annotated[
        int | None, typer.Option("--revision", "-r", min=1, help="Default: the latest")
    ] = None,
    to: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="File to write (default: NAME_REV.zip; - for stdout)"),
    ] = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Download a revision's zip."""
    client = Client.configured(config)
    code = client.code_by_name(name)
    data = client.download(code["id"], revision)
    if to is not None and str(to) == "-":
        import sys

        sys.stdout.buffer.write(data)
        return
    target = to or Path(f"{name}_{revision or code['rev']}.zip")
    try:
        target.write_bytes(data)
    except OSError as exc:
        raise ClientError(f"cannot write {target}: {exc}") from exc
    if as_json:
        output.print_json(
            {"name": name, "rev": revision or code["rev"], "path": str(target), "bytes": len(data)}
        )
        return
    output.line(f"Wrote {target} ({len(data)} bytes)")


@codes_app.command("delete")
def codes_delete(
    name: Annotated[str, typer.Argument(help="Code package name")],
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Delete a code package and its revisions (its finished tasks stay listed)."""
    client = Client.configured(config)
    code = client.code_by_name(name)
    result = client.delete_code(code["id"])
    if as_json:
        output.print_json({**result, "id": code["id"], "name": name})
        return
    output.line(f"Deleted {name} (id {code['id']})")


def stats(
    name: Annotated[str, typer.Argument(help="Code package name")],
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """How many tasks of a code package, per status, were created in the last 24 hours."""
    client = Client.configured(config)
    found = client.code_stats(client.code_by_name(name)["id"])
    keys = [*STATS_KEYS, *sorted(set(found) - set(STATS_KEYS))]
    output.fields({key: found.get(key, 0) for key in keys}, keys, as_json=as_json)
