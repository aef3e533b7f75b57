"""``GET /health``: liveness for load balancers and systemd. No token: it tells whether this
process can reach its store and (when it runs tasks) its Docker engine, nothing more."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from .. import __version__
from .deps import ServicesDep
from .responses import ErrorBody

router = APIRouter(tags=["meta"])
log = logging.getLogger("dockworker.api")

NOT_USED = "not used"
STORE_PROBE_AGE_S = 60.0  # any small read will do: the runners heard of in the last minute


@router.get(
    "/health",
    responses={503: {"model": ErrorBody, "description": "The store or the engine cannot be reached"}},
)
def health(svc: ServicesDep) -> JSONResponse:
    """200 ``{"status": "ok", "store": "ok", "engine": "ok"}`` when the store answers and the
    Docker engine (``"not used"`` by an API server without a runner) answers a ping; 503 with
    ``msg`` naming what failed otherwise."""
    checks = {"store": _check(lambda: svc.store.live_clusters(STORE_PROBE_AGE_S)), "engine": NOT_USED}
    if svc.engine_ping is not None:
        checks["engine"] = _check(svc.engine_ping)
    failed = {name: state for name, state in checks.items() if state not in ("ok", NOT_USED)}
    body: dict[str, Any] = {"status": "ok" if not failed else "unhealthy", **checks, "version": __version__}
    if failed:
        body["msg"] = "; ".join(f"{name}: {state}" for name, state in failed.items())
        return JSONResponse(body, status_code=503)
    return JSONResponse(body)


def _check(probe: Any) -> str:
    try:
        probe()
    except Exception as exc:
        log.warning("health check: %s", exc)
        text = str(getattr(exc, "message", None) or exc).strip()
        detail = getattr(exc, "detail", "")
        if detail:
            text = f"{text}: {detail}"
        return text.splitlines()[0] if text else type(exc).__name__
    return "ok"
