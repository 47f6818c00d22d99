"""Routes every client may use without credentials: the server's Noise key,
DERP probes, the captive-portal check, health and a short index page."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from server.api.deps import WebDeps

__all__ = ["ZERO_MKEY", "routes"]

ZERO_MKEY = "mkey:" + "0" * 64


def routes(deps: WebDeps) -> list[Route]:
    async def key(request: Request) -> Response:
        return JSONResponse({"legacyPublicKey": ZERO_MKEY, "publicKey": deps.server_key.text})

    async def derp_probe(request: Request) -> Response:
        return Response(b"", headers={"Access-Control-Allow-Origin": "*"})

    async def derp_no_upgrade(request: Request) -> Response:
        return PlainTextResponse("DERP requires connection upgrade\n", status_code=426)

    async def generate_204(request: Request) -> Response:
        challenge = request.headers.get("x-tailscale-challenge")
        headers = {"X-Tailscale-Response": f"response {challenge}"} if challenge else {}
        return Response(status_code=204, headers=headers)

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "serving": deps.status.serving})

    async def index(request: Request) -> Response:
        return PlainTextResponse(
            "tailnetd: a Tailscale control server.\n"
            "Connect with: tailscale up --login-server=<this URL> --auth-key=<key>\n"
            "Admin API: /api/v1/openapi.json\n"
        )

    return [
        Route("/", index),
        Route("/key", key),
        Route("/derp", derp_no_upgrade),
        Route("/derp/probe", derp_probe, methods=["GET", "HEAD"]),
        Route("/derp/latency-check", derp_probe, methods=["GET", "HEAD"]),
        Route("/generate_204", generate_204),
        Route("/health", health),
    ]
