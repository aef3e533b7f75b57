"""The HUD: the web dashboard under ``/hud/``, served by the API process.

Server-rendered Jinja2 templates, one stylesheet and one small script (no inline script or
style, so the Content-Security-Policy stays strict), charts drawn as SVG on the server: nothing
is built at install time or fetched at run time. See docs/hud.md."""

from __future__ import annotations

from fastapi import FastAPI
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from . import analytics, codes, login, schedules, tasks
from .web import HERE, HudState, harden


class _Static(StaticFiles):
    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers["Cache-Control"] = "no-cache"  # revalidated (ETag): an upgrade shows at once
        return harden(response)


def install_hud(app: FastAPI) -> None:
    app.state.hud = HudState()
    app.mount("/hud/static", _Static(directory=str(HERE / "static")), name="hud-static")
    for module in (login, tasks, codes, schedules, analytics):
        app.include_router(module.router)
    app.include_router(login.fallback)
