"""A start's third phase: how nodes get in. Interactive logins, SSH checks,
OIDC, router health probes, and the control handler that answers nodes."""

from __future__ import annotations

import base64
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from server.auth.pending import PendingLogins
from server.auth.sshcheck import SshChecks
from server.control import PROBE_PATH, ControlHandler, ControlSettings
from server.oidc.wiring import oidc_login
from server.startup import Shared
from server.startup.tailnet import RunningTailnet
from server.store import SqlStore
from server.tailnet.probes import RouterProbes
from server.tailnet.timers import Probing

if TYPE_CHECKING:
    from server.oidc.login import OidcLogin
    from server.oidc.provider import Provider

__all__ = ["Logins", "start_logins"]


@dataclass(frozen=True, slots=True)
class Logins:
    logins: PendingLogins
    ssh_checks: SshChecks
    oidc: OidcLogin | None  # None: no identity provider configured
    oidc_provider: Provider | None  # closed by the Server's stop
    probing: Probing
    control: ControlHandler


def start_logins(
    shared: Shared,
    store: SqlStore,
    running: RunningTailnet,
    *,
    public_url: Callable[[], str],
    control_settings: Callable[[], ControlSettings],
) -> Logins:
    cfg, clock, log = shared.config, shared.clock, shared.log
    registry, tailnet = running.registry, running.tailnet
    logins = PendingLogins(
        store,
        registry,
        base_url=public_url,
        timeout=lambda: timedelta(seconds=cfg.login_timeout),
        clock=clock,
        rng=os.urandom,
        log=log,
    )
    ssh_checks = SshChecks(
        base_url=public_url,
        timeout=lambda: timedelta(seconds=cfg.login_timeout),
        rng=os.urandom,
        log=log,
        via_provider=cfg.oidc is not None,
    )
    oidc: OidcLogin | None = None
    provider: Provider | None = None
    if cfg.oidc is not None:
        oidc, provider = oidc_login(
            cfg.oidc,
            public_url=public_url(),
            logins=logins,
            ssh_checks=ssh_checks,
            tailnet=tailnet,
            users=running.users,
            store=store,
            clock=clock,
            log=log,
        )
    probing = Probing(
        RouterProbes(
            interval=timedelta(seconds=cfg.probe_interval),
            misses=cfg.probe_misses,
            token=lambda: base64.urlsafe_b64encode(os.urandom(12)).decode(),
        ),
        registry,
        tailnet,
        url=lambda token: public_url() + PROBE_PATH + token,
        clock=clock,
        log=log,
    )
    control = ControlHandler(
        tailnet,
        registry,
        store,
        clock=clock,
        settings=control_settings,
        log=log,
        metrics=shared.metrics,
        logins=logins,
        ssh_checks=ssh_checks,
        on_refused=shared.events.login_refused,
        on_probe=probing.answered,
    )
    return Logins(logins, ssh_checks, oidc, provider, probing, control)
