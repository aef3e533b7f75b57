"""The application factory: explicit wiring, no globals."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import swagger_ui_bundle
from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from .. import __version__
from ..settings import Settings
from ..store import Store
from . import (
    admin,
    clusters,
    codes,
    health,
    metrics,
    projects,
    runner_api,
    runners,
    schedules,
    tasks,
    webhooks,
)
from .deps import Services
from .errors import AnswerUnexpectedErrors, install_error_handlers
from .hud import install_hud
from .limits import BodySizeLimit, RefuseNulInUrl
from .responses import ADMIN_RESPONSES, ERROR_RESPONSES

DESCRIPTION = """\
dockworker runs each task in a fresh Docker container. This API is wire-compatible with
IronWorker's REST API v2: authenticate with `Authorization: OAuth <token>` or `?oauth=<token>`;
errors come back as `{"msg": "..."}`. A project token reaches its own project only (404 for any
other); an admin token reaches every project and manages projects and tokens (`admin`).
"""


def create_app(
    settings: Settings,
    store: Store,
    *,
    on_enqueue: Callable[[], None] | None = None,
    image_present: Callable[[str], bool | None] | None = None,
    stopping: threading.Event | None = None,
    engine_ping: Callable[[], object] | None = None,
) -> FastAPI:
    """``stopping``: set when the process begins to stop, so that followed log streams end
    cleanly (with a last line saying so) before the server closes its connections.
    ``engine_ping``: raises when the Docker engine cannot be reached (``GET /health``); None in
    a process that runs no tasks."""
    app = FastAPI(
        title="dockworker", version=__version__, description=DESCRIPTION, docs_url=None, redoc_url=None
    )
    _serve_docs_offline(app)
    app.state.services = Services(
        settings=settings,
        store=store,
        on_enqueue=on_enqueue or store.notify_work,
        image_present=image_present or (lambda _image: None),
        stopping=stopping or threading.Event(),
        engine_ping=engine_ping,
    )
    install_error_handlers(app)
    _document_validation_as_400(app)
    app.include_router(projects.router, responses=ERROR_RESPONSES)
    app.include_router(codes.router, responses=ERROR_RESPONSES)
    app.include_router(webhooks.router, responses=ERROR_RESPONSES)
    app.include_router(tasks.router, responses=ERROR_RESPONSES)
    app.include_router(schedules.router, responses=ERROR_RESPONSES)
    app.include_router(runners.router, responses=ADMIN_RESPONSES)
    app.include_router(clusters.router, responses=ERROR_RESPONSES)
    app.include_router(runner_api.router, responses=ERROR_RESPONSES)
    app.include_router(admin.router, responses=ADMIN_RESPONSES)
    app.include_router(health.router)
    metrics.install_metrics(app, store, settings)
    install_hud(app)
    app.add_middleware(
        BodySizeLimit,
        default_limit=settings.max_request_bytes,
        upload_limit=settings.max_code_bytes + 1024 * 1024,
    )
    app.add_middleware(RefuseNulInUrl)
    app.add_middleware(AnswerUnexpectedErrors)  # the outermost: it answers for all the others
    return app


def _serve_docs_offline(app: FastAPI) -> None:
    """The interactive docs with Swagger UI served from the package, not from a CDN, so they
    work on hosts without internet access. Swagger UI 5 (Apache-2.0, from the PyPI package
    swagger-ui-bundle-v2, which vendors swagger-ui-dist) reads the OpenAPI 3.1 that FastAPI
    writes; Swagger UI 4 cannot."""
    app.mount(
        "/static/swagger", StaticFiles(directory=str(swagger_ui_bundle.swagger_ui_path)), name="swagger"
    )

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="dockworker API",
            swagger_js_url="/static/swagger/swagger-ui-bundle.js",
            swagger_css_url="/static/swagger/swagger-ui.css",
            swagger_favicon_url="/static/swagger/favicon-32x32.png",
        )


def _document_validation_as_400(app: FastAPI) -> None:
    """FastAPI documents 422 for invalid input; dockworker answers 400 (as IronWorker did).
    Errors are JSON ``{"msg": ...}`` everywhere, also on endpoints that answer text."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            error_content = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
            for operations in document.get("paths", {}).values():
                for operation in operations.values():
                    responses = operation.get("responses", {})
                    responses.pop("422", None)
                    for status, response in responses.items():
                        if status.startswith(("4", "5")):
                            response["content"] = error_content
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
