"""Plain-HTTP routes (outside Noise): discovery, DERP probes, health, the
admin API `/api/v1/` and the Tailscale-compatible subset `/api/v2/`.

The admin API is open without credentials on the local unix socket in the
data dir (file permissions guard it: having the socket is being the admin).
Over TCP every API route wants an API key (`Authorization: Bearer <key>`, or
HTTP Basic with the key as the user name), and API keys themselves are only
created through the socket, so a leaked key can never mint another. A key's
scope is `read` (GET routes) or `admin`.

Start-up stays off starlette, jinja2 and the route tables (`_app.py`): the app
`build_app` returns answers `GET /health` itself and builds the real one on the
first other request, so a server is serving maps before those modules load.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from server.api.deps import WebDeps, parse_duration

if TYPE_CHECKING:
    from server.api.endpoints import Endpoint

__all__ = [
    "HEALTH_PATH",
    "KEY_PATH",
    "ZERO_MKEY",
    "WebDeps",
    "api_endpoints",
    "build_app",
    "build_metrics_app",
    "health_body",
    "key_body",
    "parse_duration",
]

HEALTH_PATH = "/health"
KEY_PATH = "/key"
ZERO_MKEY = "mkey:" + "0" * 64


def key_body(deps: WebDeps) -> dict[str, str]:
    """/key: the server's Noise key (the zero legacy key: no pre-Noise protocol)."""
    return {"legacyPublicKey": ZERO_MKEY, "publicKey": deps.server_key.text}


def health_body(deps: WebDeps) -> dict[str, Any]:
    """/health: live (the loop answers) and which commit is served."""
    return {"status": "ok", "serving": deps.status.serving}


def api_endpoints(deps: WebDeps) -> list[Endpoint]:
    """Every API endpoint, the OpenAPI document's own included."""
    from server.api import _app

    return _app.api_endpoints(deps)


def build_app(deps: WebDeps) -> Any:
    """The plain-HTTP ASGI app: discovery, probes, login pages, the APIs and the
    operator page; starlette and the routes load on the first request but /health."""

    def build() -> Any:
        from server.api import _app

        return _app.build_app(deps)

    return LazyApp(build, deps)


def build_metrics_app(deps: WebDeps) -> Any:
    """The plain-HTTP --metrics-listen port: /metrics, /health and /ready only."""

    def build() -> Any:
        from server.api import _app

        return _app.build_metrics_app(deps)

    return LazyApp(build, deps)


class LazyApp:
    """An ASGI app built by `build` on the first request that is not `GET /health`
    (which it answers as the built app would, and counts the same way)."""

    def __init__(self, build: Callable[[], Any], deps: WebDeps) -> None:
        self._build = build
        self._deps = deps
        self._app: Any = None

    @property
    def app(self) -> Any:
        """The starlette app (built now if no request has needed it yet)."""
        if self._app is None:
            self._app = self._build()
        return self._app

    @property
    def routes(self) -> list[Any]:
        return list(self.app.routes)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        # Every client's first request, at every (re)connect: a registration
        # storm's worth of them should not each go through starlette's routing.
        if _is(scope, KEY_PATH, ("GET",)):
            await self._json(KEY_PATH, "GET", key_body(self._deps), send)
            return
        if self._app is None and _is(scope, HEALTH_PATH, ("GET", "HEAD")):
            await self._json(HEALTH_PATH, scope["method"], health_body(self._deps), send)
            return
        await self.app(scope, receive, send)

    async def _json(self, path: str, method: str, content: Any, send: Any) -> None:
        # As starlette's JSONResponse renders it, counted as RequestCounter counts it.
        body = json.dumps(content, ensure_ascii=False, separators=(",", ":"))
        raw = body.encode()
        headers = [
            (b"content-length", str(len(raw)).encode()),
            (b"content-type", b"application/json"),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else raw})
        if self._deps.metrics is not None:
            self._deps.metrics.http_request(path, method, 200)


def _is(scope: Any, path: str, methods: tuple[str, ...]) -> bool:
    return (
        scope.get("type") == "http" and scope.get("path") == path and scope.get("method") in methods
    )
