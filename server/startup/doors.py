"""A start's doors: STUN, the control port's TLS, the front doors (the control
port's, with the /ts2021 and /derp upgrades in front of the public HTTP app;
the admin socket's; the metrics port's; ACME's port 80), and listening on a
port, a failure said as a StartupError."""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from server.api import WebDeps, build_app, build_metrics_app
from server.config import ServerConfig
from server.edge.control_conn import Handler
from server.edge.control_types import AnswerNow
from server.edge.http1 import FrontDoor, UpgradeHandler
from server.edge.listeners import ConnectionHandler, ListenError, Listeners
from server.edge.stun_server import StunServer, start_stun_server
from server.edge.upgrades import Ts2021Upgrade, derp_upgrade
from server.sources.repo import RepoStatus
from server.startup import Shared, StartupError
from server.startup.logins import Logins
from server.startup.state import OpenState
from server.startup.tailnet import RunningTailnet
from server.tls.acme_http import ChallengeResponder
from server.tls.serving import ServingTls

if TYPE_CHECKING:
    from server.edge.derp_server import DerpServer

__all__ = [
    "FrontDoors",
    "front_doors",
    "listen",
    "listen_http01",
    "open_stun",
    "serving_tls",
]


@dataclass(frozen=True, slots=True)
class FrontDoors:
    ts2021: Ts2021Upgrade  # its connection count is a live metric
    public: FrontDoor  # the control port's
    local: FrontDoor  # the admin socket's: the app with local rights
    metrics: FrontDoor | None  # --metrics-listen: /metrics, /health and /ready only
    http01: FrontDoor | None  # ACME's port 80: the public door over plain HTTP


def serving_tls(
    cfg: ServerConfig,
    responder: ChallengeResponder,
    *,
    log: logging.Logger,
    clock: Callable[[], datetime],
) -> ServingTls:
    """The control port's TLS: certificate files, ACME or none."""
    acme = None
    if cfg.acme_domain is not None:
        from server.tls.acme import AcmeSettings  # cryptography.x509: only for TLS

        acme = AcmeSettings(
            cfg.acme_domain, cfg.acme_email, cfg.acme_directory, cfg.data_dir / "acme"
        )
    return ServingTls(
        cert=cfg.tls_cert,
        key=cfg.tls_key,
        acme=acme,
        responder=responder,
        server_url=cfg.server_url,
        log=log,
        clock=clock,
    )


async def open_stun(cfg: ServerConfig, log: logging.Logger) -> StunServer | None:
    """The STUN server, or None if --stun-listen is off."""
    if cfg.stun_host is None:
        return None
    try:
        return await start_stun_server(cfg.stun_host, cfg.stun_port, log=log)
    except OSError as exc:
        error = ListenError("STUN (udp)", cfg.stun_host, cfg.stun_port, exc)
        raise StartupError(str(error)) from None


def front_doors(
    shared: Shared,
    state: OpenState,
    running: RunningTailnet,
    logins: Logins,
    status: RepoStatus,
    *,
    control: Handler,
    answer_now: AnswerNow,
    derp: Callable[[], DerpServer],
    sync: Callable[[], Awaitable[None]],
    acme_responder: ChallengeResponder,
    scheme: str,
    http01: bool,
) -> FrontDoors:
    """`http01`: whether ACME's port 80 is opened."""
    log = shared.log

    def web(local: bool) -> WebDeps:
        return WebDeps(
            state.server_key.public(),
            running.tailnet,
            running.registry,
            state.store,
            shared.clock,
            status,
            os.urandom,
            local=local,
            sync=sync,
            rollout=state.commits,
            metrics=shared.metrics,
            log=log,
            documents=state.commits.serving_documents,
            events=shared.events,
            logins=logins.logins,
            ssh_checks=logins.ssh_checks,
            oidc=logins.oidc,
            users=running.users,
        )

    ts2021 = Ts2021Upgrade(state.server_key, control, log=log, answer_now=answer_now)
    upgrades: dict[str, UpgradeHandler] = {"/ts2021": ts2021, "/derp": derp_upgrade(derp)}
    public = acme_responder.wrap(build_app(web(local=False)))
    metrics = shared.config.metrics_host is not None
    return FrontDoors(
        ts2021,
        FrontDoor(public, upgrades, log=log, scheme=scheme),
        FrontDoor(build_app(web(local=True)), {}, log=log),
        FrontDoor(build_metrics_app(web(local=False)), {}, log=log) if metrics else None,
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
