"""A start's front doors: the control port's (the /ts2021 and /derp upgrades in
front of the public HTTP app), the admin socket's, the metrics port's and ACME's
port 80; and listening on a port, a failure said as a StartupError."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from server.api import WebDeps, build_app, build_metrics_app
from server.config import ServerConfig
from server.edge.control_conn import Handler
from server.edge.control_types import AnswerNow
from server.edge.http1 import FrontDoor, UpgradeHandler
from server.edge.listeners import ConnectionHandler, ListenError, Listeners
from server.edge.upgrades import Ts2021Upgrade, derp_upgrade
from server.protocol.keys import MachinePrivate
from server.startup import StartupError
from server.tls.acme_http import ChallengeResponder

if TYPE_CHECKING:
    from server.edge.derp_server import DerpServer

__all__ = ["FrontDoors", "front_doors", "listen", "listen_http01"]


@dataclass(frozen=True, slots=True)
class FrontDoors:
    ts2021: Ts2021Upgrade  # its connection count is a live metric
    public: FrontDoor  # the control port's
    local: FrontDoor  # the admin socket's: the app with local rights
    metrics: FrontDoor | None  # --metrics-listen: /metrics, /health and /ready only
    http01: FrontDoor | None  # ACME's port 80: the public door over plain HTTP


def front_doors(
    server_key: MachinePrivate,
    *,
    control: Handler,
    answer_now: AnswerNow,
    derp: Callable[[], DerpServer],
    web: Callable[[bool], WebDeps],
    acme_responder: ChallengeResponder,
    scheme: str,
    metrics: bool,
    http01: bool,
    log: logging.Logger,
) -> FrontDoors:
    """`web(local)` is what the HTTP app is given; `metrics` and `http01` say
    whether those ports are opened."""
    ts2021 = Ts2021Upgrade(server_key, control, log=log, answer_now=answer_now)
    upgrades: dict[str, UpgradeHandler] = {"/ts2021": ts2021, "/derp": derp_upgrade(derp)}
    public = acme_responder.wrap(build_app(web(False)))
    return FrontDoors(
        ts2021,
        FrontDoor(public, upgrades, log=log, scheme=scheme),
        FrontDoor(build_app(web(True)), {}, log=log),
        FrontDoor(build_metrics_app(web(False)), {}, log=log) if metrics else None,
        # /ts2021 is served on port 80 too: clients given an https:// URL try it.
        FrontDoor(public, upgrades, log=log, scheme="http") if http01 else None,
    )


async def listen(
    listeners: Listeners, what: str, host: str, port: int, handle: ConnectionHandler, **kw: Any
) -> int:
    try:
        return await listeners.tcp(what, host, port, handle, **kw)
    except ListenError as exc:
        raise StartupError(str(exc)) from None


async def listen_http01(listeners: Listeners, cfg: ServerConfig, door: FrontDoor) -> int:
    try:
        return await listeners.tcp("HTTP-01", cfg.acme_http_host, cfg.acme_http_port, door.handle)
    except ListenError as exc:
        raise StartupError(
            f"ACME: cannot listen on {exc.host}:{exc.port} for HTTP-01: "
            f"{exc.strerror} (use --acme-http-listen, or allow binding port 80)"
        ) from None
