"""The HUD: the web dashboard under ``/hud/``, served by the API process.

Server-rendered Jinja2 templates, one stylesheet and one small script (no inline script or
style, so the Content-Security-Policy stays strict), charts drawn as SVG on the server: nothing
is built at install time or fetched at run time. See docs/hud.md."""

from __future__ import annotations

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from . import analytics, codes, login, schedules, tasks
from .web import HERE, HudState, error_page, harden


class _Static(StaticFiles):
    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers["Cache-Control"] = "no-cache"  # revalidated (ETag): an upgrade shows at once
        return harden(response)


async def _no_such_page(request: Request) -> Response:
    return harden(error_page(404, "No such page"))


def install_hud(app: FastAPI) -> None:
    app.state.hud = HudState()
    app.mount("/hud/static", _Static(directory=str(HERE / "static")), name="hud-static")
    for module in (login, tasks, codes, schedules, analytics):
        app.include_router(module.router)
    # After every HUD route: any other address under /hud/ is an HTML 404 with the HUD's headers.
    app.add_route("/hud/{anything:path}", _no_such_page, methods=["GET", "POST"], include_in_schema=False)
