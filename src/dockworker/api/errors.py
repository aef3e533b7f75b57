"""Every error leaves the API as ``{"msg": "..."}`` with a 4xx or 5xx status, and the client's
keep-alive connection stays open (500s included)."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import ClientError, InfrastructureError
from ..store import StorageFull
from .limits import answer

log = logging.getLogger("dockworker.api")


def _location(loc: tuple[object, ...] | list[object], prefix: str | None) -> str:
    parts = [str(p) for p in loc if p not in ("body",)]
    if prefix:
        parts.insert(0, prefix)
    return ".".join(parts) or "request"


def describe_errors(errors: list[dict[str, object]], prefix: str | None = None) -> str:
    described = []
    for error in errors[:5]:
        loc = error.get("loc", ())
        where = _location(loc if isinstance(loc, tuple | list) else (), prefix)
        message = str(error.get("msg", "invalid"))
        if error.get("type") == "extra_forbidden":
            message = "unknown field"
        described.append(f"{where}: {message}")
    more = len(errors) - len(described)
    return "; ".join(described) + (f" (and {more} more)" if more > 0 else "")


def describe_validation_error(exc: ValidationError, prefix: str | None = None) -> str:
    return describe_errors([dict(e) for e in exc.errors()], prefix)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ClientError)
    async def client_error(_: Request, exc: ClientError) -> JSONResponse:
        return JSONResponse({"msg": exc.message}, status_code=exc.status_code)

    @app.exception_handler(StorageFull)
    async def storage_full(_: Request, exc: StorageFull) -> JSONResponse:
        return JSONResponse({"msg": f"Insufficient storage: {exc.message}"}, status_code=507)

    @app.exception_handler(InfrastructureError)
    async def infrastructure_error(_: Request, exc: InfrastructureError) -> JSONResponse:
        return JSONResponse({"msg": f"Service unavailable: {exc.message}"}, status_code=503)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [dict(e) for e in exc.errors()]
        if any(e.get("type") == "json_invalid" for e in errors):
            return JSONResponse({"msg": "Invalid JSON in request body"}, status_code=400)
        return JSONResponse({"msg": describe_errors(errors)}, status_code=400)

    @app.exception_handler(DataError)
    async def unstorable_value(_: Request, exc: DataError) -> JSONResponse:
        # PostgreSQL refuses some values SQLite takes (NUL characters in text, numbers beyond
        # the column's range): the caller sent them, and the transaction stored nothing.
        if "NUL" in str(exc.orig):
            return JSONResponse({"msg": "NUL characters are not allowed in text"}, status_code=400)
        return JSONResponse({"msg": "a value in the request cannot be stored"}, status_code=400)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"msg": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)


class AnswerUnexpectedErrors:
    """Any other exception becomes a 500 ``{"msg": ...}``, its traceback logged once. Starlette's
    own last resort answers too, but then re-raises to the server, which logs it again and
    closes the connection: the client's next request on it fails (ECONNRESET)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            log.exception("api.unexpected_error %s %s", scope.get("method"), scope.get("path"))
            if started:  # half an answer is out: the server ends the connection, as it must
                return
            await answer(send, 500, "Internal server error")
