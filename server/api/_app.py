"""The starlette apps behind `server.api.build_app`: every route, loaded on
the first request that needs one (see `server/api/__init__.py`)."""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette
from starlette.responses import JSONResponse

from server.api import discovery, oauth, v1, v2
from server.api.deps import WebDeps
from server.api.endpoints import Call, Endpoint, to_routes
from server.api.openapi import openapi_document
from server.auth import pages as login_pages
from server.metrics import RequestCounter
from server.page import Sessions, page_routes

__all__ = ["api_endpoints", "build_app", "build_metrics_app"]

OPENAPI_PATH = "/api/v1/openapi.json"


def api_endpoints(deps: WebDeps) -> list[Endpoint]:
    """Every API endpoint, the OpenAPI document's own included."""
    endpoints = [*v1.endpoints(deps), *v2.endpoints(deps), *oauth.endpoints(deps)]

    async def openapi(call: Call) -> Any:
        return JSONResponse(document)

    own = Endpoint("GET", OPENAPI_PATH, openapi, "This document", "meta", needs="public")
    endpoints.append(own)
    document = openapi_document(endpoints, title="tailnetd API", version="1")
    return endpoints


def build_app(deps: WebDeps) -> Starlette:
    api = to_routes(api_endpoints(deps), local=deps.local, store=deps.store, clock=deps.clock)
    probes = discovery.probe_routes(deps, with_metrics=deps.local)
    pages = []
    if deps.logins is not None:
        pages = login_pages.routes(deps.logins, deps.ssh_checks, deps.clock)
    if deps.oidc is not None and not deps.local:  # first: its /register/ redirects
        pages = [*deps.oidc.routes(), *pages]
    page = page_routes(deps, Sessions(deps.rng))
    return _counted(Starlette(routes=[*discovery.routes(deps), *probes, *pages, *api, *page]), deps)


def build_metrics_app(deps: WebDeps) -> Starlette:
    """The plain-HTTP --metrics-listen port: /metrics, /health and /ready only."""
    return _counted(Starlette(routes=discovery.probe_routes(deps, with_metrics=True)), deps)


def _counted(app: Starlette, deps: WebDeps) -> Starlette:
    if deps.metrics is not None:
        app.add_middleware(RequestCounter, metrics=deps.metrics)
    return app
