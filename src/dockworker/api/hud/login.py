"""Logging in with a token (never in a URL: a POSTed form), logging out, the admin's projects."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import APIRouter, Form, Request
from starlette.responses import Response

from ..deps import ServicesDep
from .session import LOGIN_COOKIE, SESSION_COOKIE, Flash, clear_cookie
from .web import (
    FormViewerDep,
    HudRoute,
    LoginRequired,
    ViewerDep,
    redirect,
    render,
    signer_of,
    viewer,
)

router = APIRouter(prefix="/hud", route_class=HudRoute, include_in_schema=False)


def _login_form(request: Request, svc: ServicesDep, error: str | None = None, status: int = 200) -> Response:
    """The form, with the nonce of the login cookie (a new one when there is none)."""
    signer = signer_of(request, svc)
    nonce = signer.login_nonce(request)
    fresh = nonce is None
    nonce = nonce or secrets.token_urlsafe(16)
    response = render(request, "login.html", who=None, error=error, status=status, nonce=nonce)
    if fresh:
        signer.set_login_nonce(response, request, nonce)
    return response


@router.get("/")
def login_page(request: Request, svc: ServicesDep) -> Response:
    try:
        who = viewer(request, svc)
    except LoginRequired:
        return _login_form(request, svc)
    return redirect(request, who.home)


@router.post("/login")
def login(
    request: Request,
    svc: ServicesDep,
    token: Annotated[str, Form(max_length=200)] = "",
    nonce: Annotated[str, Form(max_length=100)] = "",
) -> Response:
    signer = signer_of(request, svc)
    expected = signer.login_nonce(request)
    if expected is None or nonce != expected:
        return _login_form(request, svc, "The login form expired: please try again.", 403)
    who = svc.store.authenticate(token.strip()) if token.strip() else None
    if who is None:
        return _login_form(request, svc, "Invalid, expired or revoked token.", 401)
    session = signer.new_session(who.id, svc.settings.hud_session_s)
    home = "/hud/projects" if who.project_id is None else f"/hud/projects/{who.project_id}"
    response = redirect(request, home)
    signer.set_session(response, request, session)
    clear_cookie(response, LOGIN_COOKIE)
    return response


@router.post("/logout")
def logout(request: Request, svc: ServicesDep, who: FormViewerDep) -> Response:
    svc.store.end_hud_session(who.session.id, who.session.expires_at)
    response = redirect(request, "/hud/", Flash(kind="ok", text="Logged out."))
    clear_cookie(response, SESSION_COOKIE)
    return response


@router.get("/projects")
def projects(request: Request, svc: ServicesDep, who: ViewerDep) -> Response:
    if not who.is_admin:
        return redirect(request, who.home)
    return render(request, "projects.html", who=who, tab="projects", projects=svc.store.list_projects())
