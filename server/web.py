"""Plain-HTTP routes (outside Noise): discovery, DERP probes, health, and the
admin API.

The admin API is open without credentials on the local unix socket in the
data dir (file permissions guard it: having the socket is being the admin).
Over TCP every `/api/v1/` route wants `Authorization: Bearer <API key>`, and
API keys themselves are only created through the socket, so a leaked key can
never mint another.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from server.bodies import CreateApiKey, CreatePreAuthKey, NoBody, RenameNode, parse_body
from server.history import history_route
from server.logs import event
from server.metrics import Metrics, RequestCounter
from server.protocol.keys import MachinePublic
from server.repo import RepoStatus
from server.store.interface import Store
from server.store.model import ApiKey, KeyRejected, NotFound, StoreError
from server.tagcheck import check_new_key_tags, undeclared
from server.tailnet import NodeRegistry, Tailnet
from server.wire import format_time

__all__ = ["WebDeps", "build_app", "build_metrics_app", "parse_duration"]

ZERO_MKEY = "mkey:" + "0" * 64
_SOCKET_ONLY = "API keys are created only on the server: run `tailnetd apikeys create` there"
# headscale's default for `apikeys create`: long enough for automation, short
# enough that a forgotten key does not stay an admin forever.
DEFAULT_API_KEY_LIFETIME = "90d"
_NEEDS_KEY = (
    "this API needs an API key: send the header `Authorization: Bearer <key>`"
    " (create a key with `tailnetd apikeys create` on the server)"
)


@dataclass(frozen=True, slots=True)
class WebDeps:
    server_key: MachinePublic
    tailnet: Tailnet
    registry: NodeRegistry
    store: Store  # pre-auth and API keys; nodes are written through the registry
    clock: Callable[[], datetime]
    status: RepoStatus
    rng: Callable[[int], bytes]
    local: bool  # True on the unix socket: admin API allowed
    # Fetch (remote) or re-read (work tree) the repository now; serves a new commit if valid.
    sync: Callable[[], Awaitable[None]] | None = None
    metrics: Metrics | None = None  # /metrics on the socket; requests are counted
    log: logging.Logger | None = None  # admin actions, one `api.*` event each


def _probe_routes(deps: WebDeps, *, with_metrics: bool) -> list[Route]:
    """/health (live: the loop answers) and /ready (a snapshot is served and
    the store answers), and /metrics on the socket and the metrics listener."""

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "serving": deps.status.serving})

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

    routes = [Route("/health", health), Route("/ready", ready)]
    metrics = deps.metrics
    if metrics is not None and with_metrics:

        async def scrape(request: Request) -> Response:
            from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

            return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

        routes.append(Route("/metrics", scrape))
    return routes


def _counted(app: Starlette, deps: WebDeps) -> Starlette:
    if deps.metrics is not None:
        app.add_middleware(RequestCounter, metrics=deps.metrics)
    return app


def build_metrics_app(deps: WebDeps) -> Starlette:
    """The plain-HTTP --metrics-listen port: /metrics, /health and /ready only."""
    return _counted(Starlette(routes=_probe_routes(deps, with_metrics=True)), deps)


def parse_duration(text: str) -> timedelta:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    text = text.strip()
    if not text or text[-1] not in units or not text[:-1].isdigit():
        raise ValueError(f"bad duration {text!r}: use a number and a unit, e.g. 90d, 12h, 30m")
    return timedelta(seconds=int(text[:-1]) * units[text[-1]])


def build_app(deps: WebDeps) -> Starlette:
    tailnet = deps.tailnet
    registry = deps.registry
    store = deps.store
    clock = deps.clock
    log = deps.log or logging.getLogger("tailnetd")
    via = "socket" if deps.local else "api_key"

    def acted(name: str, message: str, *args: Any, **fields: Any) -> None:
        log.info("api: " + message, *args, extra=event(name, via=via, **fields))

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

    async def index(request: Request) -> Response:
        return PlainTextResponse(
            "tailnetd: a Tailscale control server.\n"
            "Connect with: tailscale up --login-server=<this URL> --auth-key=<key>\n"
        )

    def unauthorized(message: str) -> Response:
        # Never echo the presented credential back: this answer is unauthenticated.
        headers = {"WWW-Authenticate": 'Bearer realm="tailnetd"'}
        return JSONResponse({"error": message}, 401, headers=headers)

    def authenticate(request: Request) -> Response | None:
        """None when the request may use the admin API, else the refusal."""
        if deps.local:
            return None
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return unauthorized(_NEEDS_KEY)
        try:
            store.use_api_key(token, clock())
        except KeyRejected as exc:
            return unauthorized(exc.reason)
        return None

    def admin(
        handler: Callable[[Request], Awaitable[Response]], *, socket_only: bool = False
    ) -> Callable[[Request], Awaitable[Response]]:
        async def wrapped(request: Request) -> Response:
            refusal = authenticate(request)
            if refusal is not None:
                return refusal
            if socket_only and not deps.local:
                return JSONResponse({"error": _SOCKET_ONLY}, 403)
            try:
                return await handler(request)
            except (KeyRejected, NotFound) as exc:
                return JSONResponse({"error": str(exc)}, 404)
            except (StoreError, ValueError) as exc:
                return JSONResponse({"error": str(exc)}, 400)

        return wrapped

    async def status(request: Request) -> Response:
        body = deps.status.to_json()
        body["nodes"] = len(tailnet.context.nodes)
        body["online"] = len(tailnet.online_ids())
        body["cut_off"] = [
            {"id": n.id, "name": n.given_name, "user": n.user, "reason": "user not in tailnet.d"}
            for n in tailnet.cut_off()
        ]
        found = undeclared(
            tailnet.source.policy, registry.nodes(), store.list_preauth_keys(), clock()
        )
        body["undeclared_tags"] = [entry.to_json() for entry in found]
        return JSONResponse(body)

    async def repo_sync(request: Request) -> Response:
        parse_body(NoBody, await request.body())
        acted("api.repo_sync", "repository sync requested")
        if deps.sync is not None:
            await deps.sync()
        return await status(request)

    def node_json(n: Any) -> dict[str, Any]:
        return {
            "id": n.id,
            "name": n.given_name,
            "hostname": n.hostname,
            "user": n.user,
            "tags": list(n.tags),
            "ipv4": str(n.ipv4) if n.ipv4 else None,
            "ipv6": str(n.ipv6) if n.ipv6 else None,
            "online": tailnet.is_online(n.id),
            "ephemeral": n.ephemeral,
            "created": format_time(n.created),
            "last_seen": format_time(n.last_seen) if n.last_seen else None,
            "key_expiry": format_time(n.key_expiry) if n.key_expiry else None,
            "machine_key": n.machine_key.text,
            "node_key": n.node_key.text,
        }

    async def list_nodes(request: Request) -> Response:
        return JSONResponse([node_json(n) for n in registry.nodes()])

    def node_id(request: Request) -> int:
        ref = request.path_params["ref"]
        if ref.isdigit():
            return int(ref)
        for n in registry.nodes():
            if n.given_name == ref:
                return n.id
        raise NotFound(f"no node named {ref!r}")

    async def delete_node(request: Request) -> Response:
        parse_body(NoBody, await request.body())
        removed = registry.remove(node_id(request))
        if removed is None:
            raise NotFound("no such node")
        acted(
            "api.node_deleted", "node %d %s deleted", removed.id, removed.given_name,
            node=removed.id, node_name=removed.given_name, user=removed.user,
        )  # fmt: skip
        return JSONResponse(node_json(removed))

    async def expire_node(request: Request) -> Response:
        parse_body(NoBody, await request.body())
        node = registry.set_key_expiry(node_id(request), clock())
        acted(
            "api.node_expired", "node %d %s expired", node.id, node.given_name,
            node=node.id, node_name=node.given_name, user=node.user,
        )  # fmt: skip
        return JSONResponse(node_json(node))

    async def rename_node(request: Request) -> Response:
        body = parse_body(RenameNode, await request.body())
        node = registry.rename(node_id(request), body.name)
        acted(
            "api.node_renamed", "node %d renamed %s", node.id, node.given_name,
            node=node.id, node_name=node.given_name, user=node.user,
        )  # fmt: skip
        return JSONResponse(node_json(node))

    def expired(expiration: datetime | None) -> bool:
        return expiration is not None and clock() >= expiration

    def key_json(k: Any) -> dict[str, Any]:
        return {
            "id": k.id,
            "prefix": k.prefix,
            "user": k.user,
            "reusable": k.reusable,
            "ephemeral": k.ephemeral,
            "tags": list(k.tags),
            "created": format_time(k.created),
            "expiration": format_time(k.expiration) if k.expiration else None,
            "used": k.used,
            "revoked": k.revoked,
            "expired": expired(k.expiration),
        }

    async def list_keys(request: Request) -> Response:
        keys = store.list_preauth_keys(request.query_params.get("user"))
        return JSONResponse([key_json(k) for k in keys])

    async def create_key(request: Request) -> Response:
        body = parse_body(CreatePreAuthKey, await request.body())
        if body.user not in tailnet.source.users:
            known = ", ".join(sorted(tailnet.source.users)) or "none"
            raise ValueError(f"user {body.user!r} is not in tailnet.d (known users: {known})")
        check_new_key_tags(body.tags, tailnet.source.policy)
        now = clock()
        lifetime = parse_duration(body.expiration) if body.expiration is not None else None
        text, created = store.create_preauth_key(
            body.user,
            reusable=body.reusable,
            ephemeral=body.ephemeral,
            tags=body.tags,
            expiration=now + lifetime if lifetime is not None else None,
            now=now,
            rng=deps.rng,
        )
        acted(
            "api.preauthkey_created", "pre-auth key %d created for %s", created.id, body.user,
            key=created.id, user=body.user, tags=list(body.tags),
        )  # fmt: skip
        return JSONResponse({"key": text, **key_json(created)})

    async def expire_key(request: Request) -> Response:
        parse_body(NoBody, await request.body())
        ref = request.path_params["ref"]
        expired = store.expire_preauth_key(int(ref) if ref.isdigit() else ref, clock())
        acted("api.preauthkey_expired", "pre-auth key %d expired", expired.id, key=expired.id)
        return JSONResponse(key_json(expired))

    def api_key_json(k: ApiKey) -> dict[str, Any]:
        return {
            "id": k.id,
            "prefix": k.prefix,
            "created": format_time(k.created),
            "expiration": format_time(k.expiration) if k.expiration else None,
            "last_used": format_time(k.last_used) if k.last_used else None,
            "expired": expired(k.expiration),
        }

    async def list_api_keys(request: Request) -> Response:
        return JSONResponse([api_key_json(k) for k in store.list_api_keys()])

    async def create_api_key(request: Request) -> Response:
        body = parse_body(CreateApiKey, await request.body())
        now = clock()
        lifetime = parse_duration(
            body.expiration if body.expiration is not None else DEFAULT_API_KEY_LIFETIME
        )
        text, created = store.create_api_key(expiration=now + lifetime, now=now, rng=deps.rng)
        acted("api.apikey_created", "API key %d created", created.id, key=created.id)
        return JSONResponse({"key": text, **api_key_json(created)})

    async def expire_api_key(request: Request) -> Response:
        parse_body(NoBody, await request.body())
        ref = request.path_params["ref"]
        expired = store.expire_api_key(int(ref) if ref.isdigit() else ref, clock())
        acted("api.apikey_expired", "API key %d expired", expired.id, key=expired.id)
        return JSONResponse(api_key_json(expired))

    routes = [
        Route("/", index),
        Route("/key", key),
        Route("/derp", derp_no_upgrade),
        Route("/derp/probe", derp_probe, methods=["GET", "HEAD"]),
        Route("/derp/latency-check", derp_probe, methods=["GET", "HEAD"]),
        Route("/generate_204", generate_204),
        *_probe_routes(deps, with_metrics=deps.local),
        Route("/api/v1/status", admin(status)),
        Route("/api/v1/repo/sync", admin(repo_sync), methods=["POST"]),
        Route("/api/v1/history", admin(history_route(lambda: deps.status.journal))),
        Route("/api/v1/nodes", admin(list_nodes)),
        Route("/api/v1/nodes/{ref}", admin(delete_node), methods=["DELETE"]),
        Route("/api/v1/nodes/{ref}/expire", admin(expire_node), methods=["POST"]),
        Route("/api/v1/nodes/{ref}/rename", admin(rename_node), methods=["POST"]),
        Route("/api/v1/preauthkeys", admin(list_keys), methods=["GET"]),
        Route("/api/v1/preauthkeys", admin(create_key), methods=["POST"]),
        Route("/api/v1/preauthkeys/{ref}/expire", admin(expire_key), methods=["POST"]),
        Route("/api/v1/apikeys", admin(list_api_keys), methods=["GET"]),
        Route("/api/v1/apikeys", admin(create_api_key, socket_only=True), methods=["POST"]),
        Route("/api/v1/apikeys/{ref}/expire", admin(expire_api_key), methods=["POST"]),
    ]
    return _counted(Starlette(routes=routes), deps)
