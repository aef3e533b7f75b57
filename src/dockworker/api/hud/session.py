"""HUD sessions: a signed cookie that names a token, never holds it.

The cookie carries a random session id, the token's id and an expiry, signed with HMAC-SHA256
under a key kept in the store's ``meta`` table (so every API server accepts it). Each request
checks the signature, the expiry, that the session was not logged out (also recorded in
``meta``) and that the token is still usable: revoking a token ends its HUD sessions at once.

Forms carry a CSRF token derived from the session id with the same key; the login form, made
before there is a session, carries a nonce that must match a cookie of its own (double
submit). Every cookie is HttpOnly, SameSite=Strict, limited to ``/hud``."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from ... import timeutil

SESSION_COOKIE = "dockworker_hud"
LOGIN_COOKIE = "dockworker_hud_login"
FLASH_COOKIE = "dockworker_hud_flash"
COOKIE_PATH = "/hud"
LOGIN_NONCE_S = 3600


@dataclass(frozen=True, slots=True, kw_only=True)
class Session:
    id: str
    token_id: str
    expires_at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Flash:
    kind: str  # "ok" or "error"
    text: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Signer:
    def __init__(self, secret: str) -> None:
        self._key = hashlib.sha256(b"dockworker-hud:" + secret.encode()).digest()

    def _mac(self, purpose: str, body: str) -> str:
        return _b64(hmac.new(self._key, f"{purpose}:{body}".encode(), hashlib.sha256).digest())

    def sign(self, purpose: str, data: dict[str, Any]) -> str:
        body = _b64(json.dumps(data, separators=(",", ":")).encode())
        return f"{body}.{self._mac(purpose, body)}"

    def unsign(self, purpose: str, value: str | None) -> dict[str, Any] | None:
        """The signed data, or None when the value is missing, altered or made for another
        purpose (a flash cookie is not a session)."""
        if not value or value.count(".") != 1:
            return None
        body, mac = value.split(".")
        if not hmac.compare_digest(mac, self._mac(purpose, body)):
            return None
        try:
            data = json.loads(_unb64(body))
        except (binascii.Error, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def csrf_token(self, session: Session) -> str:
        return self._mac("csrf", session.id)

    def check_csrf(self, session: Session, submitted: str | None) -> bool:
        return submitted is not None and hmac.compare_digest(submitted, self.csrf_token(session))

    # --- the session cookie -------------------------------------------------------------------

    def new_session(self, token_id: str, lifetime_s: int) -> Session:
        return Session(
            id=secrets.token_urlsafe(16), token_id=token_id, expires_at=timeutil.now() + lifetime_s
        )

    def session_of(self, request: Request) -> Session | None:
        """The request's session if its cookie is genuine and not expired (the caller checks
        logouts and the token)."""
        data = self.unsign("session", request.cookies.get(SESSION_COOKIE))
        if data is None:
            return None
        try:
            session = Session(id=str(data["sid"]), token_id=str(data["tid"]), expires_at=float(data["exp"]))
        except (KeyError, TypeError, ValueError):
            return None
        return session if session.expires_at > timeutil.now() else None

    def set_session(self, response: Response, request: Request, session: Session) -> None:
        value = self.sign("session", {"sid": session.id, "tid": session.token_id, "exp": session.expires_at})
        max_age = max(1, int(session.expires_at - timeutil.now()))
        _set_cookie(response, request, SESSION_COOKIE, value, max_age)

    # --- the login form's nonce ---------------------------------------------------------------

    def login_nonce(self, request: Request) -> str | None:
        data = self.unsign("login", request.cookies.get(LOGIN_COOKIE))
        if data is None or float(data.get("exp", 0)) <= timeutil.now():
            return None
        nonce = data.get("nonce")
        return nonce if isinstance(nonce, str) else None

    def set_login_nonce(self, response: Response, request: Request, nonce: str) -> None:
        value = self.sign("login", {"nonce": nonce, "exp": timeutil.now() + LOGIN_NONCE_S})
        _set_cookie(response, request, LOGIN_COOKIE, value, LOGIN_NONCE_S)

    # --- one-shot messages after a redirect ---------------------------------------------------

    def set_flash(self, response: Response, request: Request, flash: Flash) -> None:
        value = self.sign("flash", {"kind": flash.kind, "text": flash.text[:500]})
        _set_cookie(response, request, FLASH_COOKIE, value, 60)

    def flash_of(self, request: Request) -> Flash | None:
        data = self.unsign("flash", request.cookies.get(FLASH_COOKIE))
        if data is None:
            return None
        return Flash(kind=str(data.get("kind", "ok")), text=str(data.get("text", "")))


def _set_cookie(response: Response, request: Request, name: str, value: str, max_age: int) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def clear_cookie(response: Response, name: str) -> None:
    response.delete_cookie(name, path=COOKIE_PATH, httponly=True, samesite="strict")
