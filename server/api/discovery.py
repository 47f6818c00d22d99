"""Routes every client may use without credentials: the server's Noise key,
DERP probes, the captive-portal check and health (`/` leads to the operator
page, `server/page/`)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from server.api import HEALTH_PATH, KEY_PATH, ZERO_MKEY, health_body, key_body
from server.api.deps import WebDeps

__all__ = ["ZERO_MKEY", "probe_routes", "routes"]


def routes(deps: WebDeps) -> list[Route]:
    async def key(request: Request) -> Response:
        return JSONResponse(key_body(deps))

    async def derp_probe(request: Request) -> Response:
        return Response(b"", headers={"Access-Control-Allow-Origin": "*"})

    async def derp_no_upgrade(request: Request) -> Response:
        return PlainTextResponse("DERP requires connection upgrade\n", status_code=426)

    async def generate_204(request: Request) -> Response:
        challenge = request.headers.get("x-tailscale-challenge")
        headers = {"X-Tailscale-Response": f"response {challenge}"} if challenge else {}
        return Response(status_code=204, headers=headers)

    return [
        Route(KEY_PATH, key),
        Route("/derp", derp_no_upgrade),
        Route("/derp/probe", derp_probe, methods=["GET", "HEAD"]),
        Route("/derp/latency-check", derp_probe, methods=["GET", "HEAD"]),
        Route("/generate_204", generate_204),
    ]


def probe_routes(deps: WebDeps, *, with_metrics: bool) -> list[Route]:
    """/health (live: the loop answers) and /ready (a snapshot is served and
    the store answers), and /metrics on the socket and the metrics listener."""

    async def health(request: Request) -> Response:
        return JSONResponse(health_body(deps))

    async def ready(request: Request) -> Response:
        reason = None
        if deps.status.serving is None:
            reason = "no snapshot is being served yet"
        else:
            try:
                deps.store.get_node(0)  # any read: does the store answer?
            except Exception as exc:
                reason = f"the store does not answer: {exc}"
        body = {"ready": reason is None, "serving": deps.status.serving, "reason": reason}
        return JSONResponse(body, 200 if reason is None else 503)

    routes = [Route(HEALTH_PATH, health), Route("/ready", ready)]
    metrics = deps.metrics
    if metrics is not None and with_metrics:

        async def scrape(request: Request) -> Response:
            from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

            return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

        routes.append(Route("/metrics", scrape))
    return routes
