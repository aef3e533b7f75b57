"""What every HUD page shares: who is looking (the session's token), the project check (the
API's own), rendering, security headers, and errors as HTML pages with the API's statuses."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Coroutine, Hashable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path as FilePath
from typing import Annotated, Any

import jinja2
from fastapi import Depends, Form, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.responses import HTMLResponse, RedirectResponse, Response

from ... import __version__, timeutil
from ...errors import ClientError, Forbidden, InfrastructureError, NotFound
from ...models import Project, TokenInfo
from .. import deps
from ..deps import Services, ServicesDep
from ..errors import describe_errors
from .session import FLASH_COOKIE, Flash, Session, Signer, clear_cookie

HERE = FilePath(__file__).parent
CSP = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    ]
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cache-Control": "no-store",
}


ANALYTICS_TTL_S = 60.0


class LoginRequired(Exception):
    """No valid session: the browser goes to the login form."""


# --- formatting filters -----------------------------------------------------------------------


def show_time(epoch: float | None) -> str:
    if epoch is None:
        return "—"
    return datetime.fromtimestamp(epoch, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


def show_duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def show_bytes(count: float | None) -> str:
    if count is None:
        return "—"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} GiB"


def show_number(value: float) -> str:
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.1f}"
    return f"{int(value):,}"


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=jinja2.select_autoescape(["html", "svg"]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(time=show_time, duration=show_duration, bytes=show_bytes, number=show_number)
    env.globals.update(version=__version__, isfinite=math.isfinite)
    return env


TEMPLATES = _environment()


# --- who is looking ---------------------------------------------------------------------------


class Recent:
    """Results computed less than ``ttl_s`` ago, per key (at most ``size`` keys): analytics read
    a month of tasks, and need not be recomputed at every view."""

    def __init__(self, ttl_s: float, size: int = 256) -> None:
        self.ttl_s = ttl_s
        self.size = size
        self._lock = threading.Lock()
        self._values: dict[Hashable, tuple[float, Any]] = {}

    def get(self, key: Hashable, compute: Callable[[], Any]) -> tuple[Any, float]:
        """The value and when it was computed."""
        now = time.monotonic()
        with self._lock:
            found = self._values.get(key)
        if found is not None and now - found[0] < self.ttl_s:
            return found[1], timeutil.now() - (now - found[0])
        value = compute()
        with self._lock:
            if len(self._values) >= self.size:
                self._values = {k: v for k, v in self._values.items() if now - v[0] < self.ttl_s}
            if len(self._values) < self.size:
                self._values[key] = (now, value)
        return value, timeutil.now()


class HudState:
    """The signer, made once per application from the store's secret, and recent analytics."""

    def __init__(self) -> None:
        self._signer: Signer | None = None
        self.recent = Recent(ANALYTICS_TTL_S)

    def signer(self, svc: Services) -> Signer:
        if self._signer is None:
            self._signer = Signer(svc.store.hud_secret())
        return self._signer


def signer_of(request: Request, svc: Services) -> Signer:
    state: HudState = request.app.state.hud
    return state.signer(svc)


@dataclass(frozen=True, slots=True, kw_only=True)
class Viewer:
    who: TokenInfo
    session: Session
    csrf: str

    @property
    def is_admin(self) -> bool:
        return self.who.is_admin

    @property
    def home(self) -> str:
        return "/hud/projects" if self.who.project_id is None else f"/hud/projects/{self.who.project_id}"


def viewer(request: Request, svc: ServicesDep) -> Viewer:
    signer = signer_of(request, svc)
    session = signer.session_of(request)
    if session is None or svc.store.hud_session_ended(session.id, session.expires_at):
        raise LoginRequired
    try:
        who = svc.store.get_token(session.token_id)
    except NotFound as exc:
        raise LoginRequired from exc
    if not who.usable_at(timeutil.now()):
        raise LoginRequired
    return Viewer(who=who, session=session, csrf=signer.csrf_token(session))


ViewerDep = Annotated[Viewer, Depends(viewer)]


def checked_viewer(
    request: Request, svc: ServicesDep, who: ViewerDep, csrf: Annotated[str | None, Form()] = None
) -> Viewer:
    """The viewer of a form that changes something: its CSRF token must be this session's."""
    if not signer_of(request, svc).check_csrf(who.session, csrf):
        raise Forbidden("The form's security token is missing or stale: reload the page and try again")
    return who


FormViewerDep = Annotated[Viewer, Depends(checked_viewer)]


async def form_values(request: Request) -> dict[str, str]:
    """The posted form's text fields (the body is parsed once per request)."""
    form = await request.form()
    return {key: value for key, value in form.items() if isinstance(value, str)}


FormValuesDep = Annotated[dict[str, str], Depends(form_values)]


def hud_project(
    svc: ServicesDep, who: ViewerDep, project_id: Annotated[str, Path(max_length=100)]
) -> Project:
    """The path's project, through the API's own check: 404 for another project's token."""
    deps.check_project(svc, who.who, project_id)
    return svc.store.get_project(project_id)


ProjectDep = Annotated[Project, Depends(hud_project)]


def admin_viewer(who: ViewerDep) -> Viewer:
    if not who.is_admin:
        raise Forbidden("This page needs an admin token")
    return who


AdminViewerDep = Annotated[Viewer, Depends(admin_viewer)]


def page_of(fetch: Callable[[int, int], list[Any]], page: int, per_page: int) -> tuple[list[Any], bool]:
    """One page of a store listing (``fetch(page, per_page)``) and whether another follows: the
    first item of the next page is the item at offset (page + 1) x per_page, a page of one."""
    items = fetch(page, per_page)
    more = len(items) == per_page and bool(fetch((page + 1) * per_page, 1))
    return items, more


# --- answers ----------------------------------------------------------------------------------


def render(
    request: Request,
    template: str,
    *,
    who: Viewer | None,
    project: Project | None = None,
    tab: str = "",
    status: int = 200,
    **context: Any,
) -> HTMLResponse:
    svc: Services = request.app.state.services
    flash = signer_of(request, svc).flash_of(request) if FLASH_COOKIE in request.cookies else None
    html = TEMPLATES.get_template(template).render(
        who=who, project=project, tab=tab, flash=flash, path=request.url.path, **context
    )
    response = HTMLResponse(html, status_code=status)
    if flash is not None:
        clear_cookie(response, FLASH_COOKIE)
    return response


def redirect(request: Request, url: str, flash: Flash | None = None) -> RedirectResponse:
    """303 See Other: after a form, the browser GETs the next page."""
    response = RedirectResponse(url, status_code=303)
    if flash is not None:
        svc: Services = request.app.state.services
        signer_of(request, svc).set_flash(response, request, flash)
    return response


def error_page(status: int, message: str) -> HTMLResponse:
    html = TEMPLATES.get_template("error.html").render(status=status, message=message)
    return HTMLResponse(html, status_code=status)


def harden(response: Response) -> Response:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


class HudRoute(APIRoute):
    """Errors become HTML pages with the status the API would answer (404 for another project's
    objects, 403, 409, 400); no session leads to the login form; every answer gets the HUD's
    security headers."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            try:
                response = await handler(request)
            except LoginRequired:
                response = RedirectResponse("/hud/", status_code=303)
            except ClientError as exc:
                response = error_page(exc.status_code, exc.message)
            except InfrastructureError as exc:
                response = error_page(503, f"Service unavailable: {exc.message}")
            except RequestValidationError as exc:
                response = error_page(400, describe_errors([dict(e) for e in exc.errors()]))
            return harden(response)

        return guarded
