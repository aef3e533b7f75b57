"""The error answers every endpoint may give, declared so the OpenAPI document is complete."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


class ErrorBody(BaseModel):
    msg: str


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": description}


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _error("Invalid request: bad JSON, wrong types, unknown fields, limits"),
    401: _error("Missing, invalid, expired or revoked token"),
    404: _error("Not found, or not visible to this token"),
    405: _error("Method not allowed"),
    409: _error("Conflicts with the current state (e.g. the task already finished)"),
    413: _error("Request body too large"),
    503: _error("The infrastructure (the database, the engine) is unavailable; retry with backoff"),
    507: _error("The database's disk is full: nothing was written (reads still work); retry later"),
}

# Endpoints only an admin token may call answer 403 to a project token (404 when the path names
# another project: a project token learns nothing about other projects).
ADMIN_RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERROR_RESPONSES,
    403: _error("Needs an admin token"),
}
