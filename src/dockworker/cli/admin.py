"""``dockworker projects|token``: projects and tokens, for the operator.

Two ways in. On the service's host, through the store (``--data-dir``/``--store``, as the
service was started): no token needed, and the only way to make an admin token
(``token create --admin``), e.g. when the first one was lost. From anywhere, through the API
with an admin token (``--admin-token`` or ``DOCKWORKER_ADMIN_TOKEN``, and ``--url``)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Protocol

import httpx2
import typer
from rich.markup import escape
from rich.table import Table

from .. import timeutil
from ..errors import ClientError
from ..settings import MAX_TOKEN_LIFETIME_S, load_settings
from ..store import Store
from .client import ApiError
from .common import DataDir, JsonOpt, StoreOpt, err, out
from .queue_control import parse_duration

projects_app = typer.Typer(help="Manage projects (operator).", no_args_is_help=True)
token_app = typer.Typer(help="Manage API tokens (operator).", no_args_is_help=True)

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


def register(app: typer.Typer) -> None:
    app.add_typer(projects_app, name="projects")
    app.add_typer(token_app, name="token")


class Admin(Protocol):
    """What the commands need, answered as the API's JSON (the store side formats alike)."""

    def create_project(self, name: str, with_token: bool) -> dict[str, Any]: ...
    def list_projects(self) -> list[dict[str, Any]]: ...
    def create_token(self, project_id: str | None, name: str, expires_in: int | None) -> dict[str, Any]: ...
    def list_tokens(self, project_id: str | None) -> list[dict[str, Any]]: ...
    def revoke_token(self, token_id: str) -> dict[str, Any]: ...


class StoreAdmin:
    def __init__(self, store: Store) -> None:
        from ..api.admin import project_json, token_json

        self.store = store
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


class ApiAdmin:
    def __init__(self, url: str, token: str, timeout: float = 30) -> None:
        self.url = url.rstrip("/")
        self._http = httpx2.Client(
            base_url=self.url,
            headers={"Authorization": f"OAuth {token}", "Accept": "application/json"},
            timeout=timeout,
        )

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx2.TransportError as exc:
            raise ClientError(f"cannot reach the dockworker API at {self.url}: {exc}") from exc
        try:
            body = response.json()
        except ValueError:
            body = {"msg": response.text}
        if response.status_code >= 400:
            raise ApiError(response.status_code, str(body.get("msg", body)))
        found: dict[str, Any] = body
        return found

    def create_project(self, name: str, with_token: bool) -> dict[str, Any]:
        answer = self._call("POST", "/2/projects", json={"name": name, "create_token": with_token})
        answer.pop("msg", None)
        return answer

    def list_projects(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self._call("GET", "/2/projects")["projects"]
        return found

    def create_token(self, project_id: str | None, name: str, expires_in: int | None) -> dict[str, Any]:
        if project_id is None:
            raise ClientError("admin tokens are made on the service's host: drop --admin-token")
        body: dict[str, Any] = {"name": name, "expires_in": expires_in}
        answer = self._call("POST", f"/2/projects/{project_id}/tokens", json=body)
        answer.pop("msg", None)
        return answer

    def list_tokens(self, project_id: str | None) -> list[dict[str, Any]]:
        if project_id is None:
            raise ClientError("admin tokens are listed on the service's host: drop --admin-token")
        found: list[dict[str, Any]] = self._call("GET", f"/2/projects/{project_id}/tokens")["tokens"]
        return found

    def revoke_token(self, token_id: str) -> dict[str, Any]:
        answer = self._call("DELETE", f"/2/tokens/{token_id}")
        answer.pop("msg", None)
        return answer


@contextlib.contextmanager
def _admin(
    data_dir: Path | None, store_url: str | None, url: str, admin_token: str | None
) -> Iterator[Admin]:
    if admin_token:
        api = ApiAdmin(url, admin_token)
        try:
            yield api
        finally:
            api.close()
        return
    from ..service import open_migrated_store

    store = open_migrated_store(load_settings(data_dir=data_dir, store_url=store_url))
    try:
        yield StoreAdmin(store)
    finally:
        store.close()


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
def projects_create(
    name: Annotated[str, typer.Argument(help="The project's name")],
    with_token: Annotated[
        bool, typer.Option("--token", help="Also make its first token (shown once)")
    ] = False,
    data_dir: DataDir = None,
    store: StoreOpt = None,
    url: UrlOpt = DEFAULT_URL,
    admin_token: AdminTokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a project. Prints its id (and with --token, the token on the next line)."""
    with _admin(data_dir, store, url, admin_token) as admin:
        project = admin.create_project(name, with_token)
    if as_json:
        out.print_json(data=project)
        return
    out.print(project["id"])
    if with_token:
        out.print(project["token"]["token"])
        err.print("The token is shown only this once.")


@projects_app.command("list")
def projects_list(
    data_dir: DataDir = None,
    store: StoreOpt = None,
    url: UrlOpt = DEFAULT_URL,
    admin_token: AdminTokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List the projects, oldest first."""
    with _admin(data_dir, store, url, admin_token) as admin:
        projects = admin.list_projects()
    if as_json:
        out.print_json(data=projects)
        return
    table = Table("id", "name", "created")
    for project in projects:
        table.add_row(project["id"], escape(project["name"]), project["created_at"])
    out.print(table)


# --- tokens -----------------------------------------------------------------------------------


@token_app.command("create")
def token_create(
    project: Annotated[str | None, typer.Option(help="Project id (default: the first project)")] = None,
    name: Annotated[str, typer.Option(help="A name to recognise the token by")] = "cli",
    expires: Annotated[str | None, typer.Option(help="Lifetime: 3600, 90m, 12h, 30d (default: none)")] = None,
    admin_flag: Annotated[
        bool, typer.Option("--admin", help="An admin token (on the service's host only)")
    ] = False,
    data_dir: DataDir = None,
    store: StoreOpt = None,
    url: UrlOpt = DEFAULT_URL,
    admin_token: AdminTokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a token and print it (it is shown only this once)."""
    if admin_flag and project is not None:
        raise ClientError("--admin makes a token for every project: drop --project")
    lifetime = _expires_in(expires)
    with _admin(data_dir, store, url, admin_token) as admin:
        target = None if admin_flag else (project or _default_project(admin))
        token = admin.create_token(target, name, lifetime)
    if as_json:
        out.print_json(data=token)
        return
    out.print(token["token"], soft_wrap=True)


@token_app.command("list")
def token_list(
    project: Annotated[str | None, typer.Option(help="Only this project's tokens")] = None,
    admin_flag: Annotated[bool, typer.Option("--admin", help="Only the admin tokens (host only)")] = False,
    data_dir: DataDir = None,
    store: StoreOpt = None,
    url: UrlOpt = DEFAULT_URL,
    admin_token: AdminTokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List tokens (never their secrets). Default: every project's, and the admin tokens when
    working through the store."""
    with _admin(data_dir, store, url, admin_token) as admin:
        if admin_flag or project is not None:
            tokens = admin.list_tokens(None if admin_flag else project)
        else:
            tokens = [] if admin_token else admin.list_tokens(None)
            for found in admin.list_projects():
                tokens += admin.list_tokens(found["id"])
    if as_json:
        out.print_json(data=tokens)
        return
    table = Table("id", "project", "name", "created", "expires", "last used", "status")
    for token in tokens:
        table.add_row(
            token["id"],
            token["project_id"] or "(admin)",
            escape(token["name"]),
            token["created_at"],
            token["expires_at"] or "",
            token["last_used_at"] or "",
            _status(token),
        )
    out.print(table)


@token_app.command("revoke")
def token_revoke(
    token_id: Annotated[str, typer.Argument(help="The token's id (see 'token list'), not its secret")],
    data_dir: DataDir = None,
    store: StoreOpt = None,
    url: UrlOpt = DEFAULT_URL,
    admin_token: AdminTokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Revoke a token: it is refused from the next request on."""
    with _admin(data_dir, store, url, admin_token) as admin:
        token = admin.revoke_token(token_id)
    if as_json:
        out.print_json(data=token)
        return
    out.print(f"Revoked token {token['id']} ({escape(token['name'])})")
