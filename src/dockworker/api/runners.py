"""The runners that serve this store: where they run, for which clusters, how busy. Runners
are infrastructure shared by every project: only an admin token may list them."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter

from .deps import AdminDep, ServicesDep
from .schemas import runner_json

router = APIRouter(tags=["runners"])


def alive_horizon(heartbeat_interval_s: float) -> float:
    """A runner is considered alive when it was heard of within three heartbeats."""
    return 3 * heartbeat_interval_s + 1


@router.get("/2/runners")
def list_runners(svc: ServicesDep, _: AdminDep) -> dict[str, Any]:
    horizon = time.time() - alive_horizon(svc.settings.heartbeat_interval_s)
    return {
        "runners": [
            runner_json(r, alive=r.stopped_at is None and r.last_heartbeat >= horizon)
            for r in svc.store.list_runners()
        ]
    }
