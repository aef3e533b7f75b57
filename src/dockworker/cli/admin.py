"""``dockworker projects|token|runners``: projects, tokens and runners, for the operator.

Two ways in. On the service's host, through the store (``--data-dir``/``--store``, as the
service was started): no token needed, and the only way to make an admin token
(``token create --admin``), e.g. when the first one was lost. From anywhere, through the API
with an admin token (``--admin-token`` or ``DOCKWORKER_ADMIN_TOKEN``, and ``--url``)."""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Protocol, TypeVar

import typer

from .. import timeutil
from ..errors import ClientError
from ..settings import MAX_TOKEN_LIFETIME_S, load_settings
from . import output
from .common import DataDir, JsonOpt, StoreOpt, command_group
from .http import Http
from .output import Col
from .queue_control import parse_duration

if TYPE_CHECKING:
    from ..store import Store

projects_app = command_group("Manage projects (operator).", no_args_is_help=True)
token_app = command_group("Manage API tokens (operator).", no_args_is_help=True)

UrlOpt = Annotated[
    str,
    typer.Option("--url", envvar="DOCKWORKER_URL", help="The API, when --admin-token is given"),
]
AdminTokenOpt = Annotated[
    str | None,
    typer.Option(
        "--admin-token",
        envvar="DOCKWORKER_ADMIN_TOKEN",
        help="Work through the API with this admin token (default: through the store, on this host)",
    ),
]
DEFAULT_URL = "http://127.0.0.1:8080"


@dataclass(frozen=True, kw_only=True)
class AdminTarget:
    """Where an admin command works: through the API (an admin token) or through the store."""

    data_dir: Path | None = None
    store: str | None = None
    url: str = DEFAULT_URL
    admin_token: str | None = None


Command = TypeVar("Command", bound=Callable[..., None])


def admin_options(command: Command) -> Command:
    """Gives a command the options --data-dir, --store, --url and --admin-token, handed to it
    as one ``target: AdminTarget`` keyword."""
    signature = inspect.signature(command, eval_str=True)
    kept = [p for p in signature.parameters.values() if p.name != "target"]
    added = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)
        for name, annotation, default in (
            ("data_dir", DataDir, None),
            ("store", StoreOpt, None),
            ("url", UrlOpt, DEFAULT_URL),
            ("admin_token", AdminTokenOpt, None),
        )
    ]

    @functools.wraps(command)
    def with_target(
        *args: Any, data_dir: Path | None, store: str | None, url: str, admin_token: str | None, **kwargs: Any
    ) -> None:
        target = AdminTarget(data_dir=data_dir, store=store, url=url, admin_token=admin_token)
        command(*args, target=target, **kwargs)

    parameters = [*kept, *added]
    with_target.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    with_target.__annotations__ = {p.name: p.annotation for p in parameters}
    return with_target  # type: ignore[return-value]


def register(app: typer.Typer) -> None:
    app.add_typer(projects_app, name="projects")
    app.add_typer(token_app, name="token")
    app.command("runners")(runners)


class Admin(Protocol):
    """What the commands need, answered as the API's JSON (the store side formats alike)."""

    def create_project(self, name: str, with_token: bool) -> dict[str, Any]: ...
    def list_projects(self) -> list[dict[str, Any]]: ...
    def create_token(self, project_id: str | None, name: str, expires_in: int | None) -> dict[str, Any]: ...
    def list_tokens(self, project_id: str | None) -> list[dict[str, Any]]: ...
    def revoke_token(self, token_id: str) -> dict[str, Any]: ...
    def list_runners(self) -> list[dict[str, Any]]: ...


class StoreAdmin:
    def __init__(self, store: Store, heartbeat_interval_s: float) -> None:
        from ..api.admin import project_json, token_json

        self.store = store
        self._heartbeat_interval_s = heartbeat_interval_s
        self._project_json = project_json
        self._token_json = token_json

    def create_project(self, name: str, with_token: bool) -> dict[str, Any]:
        from ..api.schemas import check_name

        try:
            check_name(name)
        except ValueError as exc:
            raise ClientError(f"project name {name!r} {exc}") from exc
        if len(name) > 200:
            raise ClientError("a project name has at most 200 characters")
        project = self.store.create_project(name)
        answer = self._project_json(project)
        if with_token:
            secret, info = self.store.create_token(project.id, "first token")
            answer["token"] = self._token_json(info, secret)
        return answer

    def list_projects(self) -> list[dict[str, Any]]:
        return [self._project_json(p) for p in self.store.list_projects()]

    def create_token(self, project_id: str | None, name: str, expires_in: int | None) -> dict[str, Any]:
        expires_at = None if expires_in is None else timeutil.now() + expires_in
        secret, info = self.store.create_token(project_id, name, expires_at)
        return self._token_json(info, secret)

    def list_tokens(self, project_id: str | None) -> list[dict[str, Any]]:
        return [self._token_json(t) for t in self.store.list_tokens(project_id)]

    def revoke_token(self, token_id: str) -> dict[str, Any]:
        return self._token_json(self.store.revoke_token(token_id))

    def list_runners(self) -> list[dict[str, Any]]:
        from ..api.runners import alive_horizon
        from ..api.schemas import runner_json

        horizon = time.time() - alive_horizon(self._heartbeat_interval_s)
        return [
            runner_json(r, alive=r.stopped_at is None and r.last_heartbeat >= horizon)
            for r in self.store.list_runners()
        ]


class ApiAdmin:
    def __init__(self, url: str, token: str) -> None:
        self.http = Http(url, token)

    def close(self) -> None:
        self.http.close()

    def _answer(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        answer = self.http.json(method, path, **kwargs)
        answer.pop("msg", None)
        return answer

    def create_project(self, name: str, with_token: bool) -> dict[str, Any]:
        return self._answer("POST", "/2/projects", json_body={"name": name, "create_token": with_token})

    def list_projects(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self.http.field("GET", "/2/projects", "projects")
        return found

    def create_token(self, project_id: str | None, name: str, expires_in: int | None) -> dict[str, Any]:
        if project_id is None:
            raise ClientError("admin tokens are made on the service's host: drop --admin-token")
        body: dict[str, Any] = {"name": name, "expires_in": expires_in}
        return self._answer("POST", f"/2/projects/{project_id}/tokens", json_body=body)

    def list_tokens(self, project_id: str | None) -> list[dict[str, Any]]:
        if project_id is None:
            raise ClientError("admin tokens are listed on the service's host: drop --admin-token")
        found: list[dict[str, Any]] = self.http.field("GET", f"/2/projects/{project_id}/tokens", "tokens")
        return found

    def revoke_token(self, token_id: str) -> dict[str, Any]:
        return self._answer("DELETE", f"/2/tokens/{token_id}")

    def list_runners(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self.http.field("GET", "/2/runners", "runners")
        return found


@contextlib.contextmanager
def _admin(target: AdminTarget) -> Iterator[Admin]:
    if target.admin_token:
        api = ApiAdmin(target.url, target.admin_token)
        try:
            yield api
        finally:
            api.close()
        return
    from ..service import open_migrated_store

    settings = load_settings(data_dir=target.data_dir, store_url=target.store)
    if settings.store_url is None:
        _require_sqlite_store(settings.data_dir)
    store = open_migrated_store(settings)
    try:
        yield StoreAdmin(store, settings.heartbeat_interval_s)
    finally:
        store.close()


def _require_sqlite_store(data_dir: Path) -> None:
    """Admin commands work on the service's store: they never create one."""
    database = data_dir / "dockworker.db"
    if database.is_file():
        return
    hint = ""
    client_config = os.environ.get("DOCKWORKER_IRON_JSON")
    if client_config and (Path(client_config).parent / "dockworker.db").is_file():
        hint = f" (DOCKWORKER_IRON_JSON's directory has one: --data-dir {Path(client_config).parent})"
    raise ClientError(
        f"no dockworker store at {database}{hint}: pass the --data-dir (or --store) the service runs "
        "with, or work through the API with --admin-token TOKEN --url URL"
    )


def _default_project(admin: Admin) -> str:
    projects = admin.list_projects()
    if not projects:
        raise ClientError("no project yet: start 'dockworker up' once, or 'dockworker projects create NAME'")
    return str(projects[0]["id"])


def _expires_in(text: str | None) -> int | None:
    if text is None:
        return None
    seconds = parse_duration(text)
    if not 0 < seconds <= MAX_TOKEN_LIFETIME_S:
        raise ClientError("--expires must be more than 0 and at most 10 years (3650d)")
    return seconds


def _status(token: dict[str, Any]) -> str:
    if token.get("revoked_at"):
        return "revoked"
    return "active" if token.get("active") else "expired"


# --- projects ---------------------------------------------------------------------------------


@projects_app.command("create")
@admin_options
def projects_create(
    name: Annotated[str, typer.Argument(help="The project's name")],
    with_token: Annotated[
        bool, typer.Option("--token", help="Also make its first token (shown once)")
    ] = False,
    as_json: JsonOpt = False,
    *,
    target: AdminTarget,
) -> None:
    """Create a project. Prints its id (and with --token, the token on the next line)."""
    with _admin(target) as admin:
        project = admin.create_project(name, with_token)
    if as_json:
        output.print_json(project)
        return
    output.line(project["id"])
    if with_token:
        output.line(project["token"]["token"])
        output.note("The token is shown only this once.")


@projects_app.command("list")
@admin_options
def projects_list(as_json: JsonOpt = False, *, target: AdminTarget) -> None:
    """List the projects, oldest first."""
    with _admin(target) as admin:
        projects = admin.list_projects()
    output.table(
        [
            Col("id", lambda p: p["id"]),
            Col("name", lambda p: p["name"], flex=True),
            Col("created", lambda p: p["created_at"]),
        ],
        projects,
        as_json=as_json,
    )


# --- tokens -----------------------------------------------------------------------------------


@token_app.command("create")
@admin_options
def token_create(
    project: Annotated[str | None, typer.Option(help="Project id (default: the first project)")] = None,
    name: Annotated[str, typer.Option(help="A name to recognise the token by")] = "cli",
    expires: Annotated[str | None, typer.Option(help="Lifetime: 3600, 90m, 12h, 30d (default: none)")] = None,
    admin_flag: Annotated[
        bool, typer.Option("--admin", help="An admin token (on the service's host only)")
    ] = False,
    as_json: JsonOpt = False,
    *,
    target: AdminTarget,
) -> None:
    """Create a token and print it (it is shown only this once)."""
    if admin_flag and project is not None:
        raise ClientError("--admin makes a token for every project: drop --project")
    lifetime = _expires_in(expires)
    with _admin(target) as admin:
        project_id = None if admin_flag else (project or _default_project(admin))
        token = admin.create_token(project_id, name, lifetime)
    if as_json:
        output.print_json(token)
        return
    output.line(token["token"])


@token_app.command("list")
@admin_options
def token_list(
    project: Annotated[str | None, typer.Option(help="Only this project's tokens")] = None,
    admin_flag: Annotated[bool, typer.Option("--admin", help="Only the admin tokens (host only)")] = False,
    as_json: JsonOpt = False,
    *,
    target: AdminTarget,
) -> None:
    """List tokens (never their secrets).

    Default: every project's, and the admin tokens when working through the store.
    Not at a terminal: one token a line, tab-separated.
    Fields: id, project, name, status, created, expires, last used."""
    with _admin(target) as admin:
        if admin_flag or project is not None:
            tokens = admin.list_tokens(None if admin_flag else project)
        else:
            tokens = [] if target.admin_token else admin.list_tokens(None)
            for found in admin.list_projects():
                tokens += admin.list_tokens(found["id"])
    output.table(
        [
            Col("id", lambda t: t["id"]),
            Col("project", lambda t: t["project_id"] or "(admin)"),
            Col("name", lambda t: t["name"], flex=True),
            Col("status", _status),
            Col("created", lambda t: t["created_at"], drop=3),
            Col("expires", lambda t: t["expires_at"], drop=2),
            Col("last used", lambda t: t["last_used_at"], drop=1),
        ],
        tokens,
        as_json=as_json,
    )


@token_app.command("revoke")
@admin_options
def token_revoke(
    token_id: Annotated[str, typer.Argument(help="The token's id (see 'token list'), not its secret")],
    as_json: JsonOpt = False,
    *,
    target: AdminTarget,
) -> None:
    """Revoke a token: it is refused from the next request on."""
    with _admin(target) as admin:
        token = admin.revoke_token(token_id)
    if as_json:
        output.print_json(token)
        return
    output.line(f"Revoked token {token['id']} ({token['name']})")


# --- runners ----------------------------------------------------------------------------------


@admin_options
def runners(as_json: JsonOpt = False, *, target: AdminTarget) -> None:
    """List the runners that serve this store (operator).

    Not at a terminal: one runner a line, tab-separated.
    Fields: id, alive, running, slots, clusters, host, last heartbeat."""
    with _admin(target) as admin:
        found = admin.list_runners()
    output.table(
        [
            Col("id", lambda r: r["id"]),
            Col("alive", lambda r: r["alive"]),
            Col("running", lambda r: r["running"], right=True),
            Col("slots", lambda r: r["slots"], right=True),
            Col("clusters", lambda r: r["clusters"], flex=True),
            Col("host", lambda r: r["host"], drop=2),
            Col("last heartbeat", lambda r: r["last_heartbeat"], drop=1),
        ],
        found,
        as_json=as_json,
    )
