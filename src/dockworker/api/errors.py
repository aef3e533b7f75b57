"""Every error leaves the API as ``{"msg": "..."}`` with a 4xx or 5xx status."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException

from ..errors import ClientError, InfrastructureError

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

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("api.unexpected_error")
        return JSONResponse({"msg": "Internal server error"}, status_code=500)
