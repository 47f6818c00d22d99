"""GET /key, every client's first request: answered by the lazy front app itself,
byte for byte as the starlette route answers it, and counted the same way."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

from server.api import LazyApp, build_app
from server.metrics import Metrics
from tests.unit.test_admin_api import Apis, apis  # noqa: F401  (the fixture)


def _exchange(app: Any, method: str, path: str, query: bytes = b"") -> list[dict[str, Any]]:
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": query,
        "root_path": "", "headers": [(b"host", b"localhost")], "client": ("127.0.0.1", 1),
        "server": ("t", 80),
    }  # fmt: skip
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent


def test_key_is_answered_without_building_the_app_as_the_route_answers_it(
    apis: Apis,  # noqa: F811
) -> None:
    metrics = [Metrics(monotonic=lambda: 0.0) for _ in range(2)]
    fast, routed = (build_app(replace(apis.deps, metrics=m)) for m in metrics)
    assert isinstance(fast, LazyApp) and isinstance(routed, LazyApp)
    answer = _exchange(fast, "GET", "/key", b"v=133")
    assert fast._app is None  # starlette and the route tables are not loaded for it
    assert answer == _exchange(routed.app, "GET", "/key", b"v=133")
    counted = [m.counts.http_requests for m in metrics]
    assert counted[0] == counted[1] == {("/key", "GET", "200"): 1}


def test_other_methods_on_key_still_go_to_the_route(apis: Apis) -> None:  # noqa: F811
    fast = build_app(apis.deps)
    head = _exchange(fast, "HEAD", "/key")
    assert fast._app is not None
    assert head[0]["status"] == 200
    assert _exchange(fast, "POST", "/key")[0]["status"] == 405
