"""What the HTTP API is given by the assembly (`server/app.py`)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from server.auth.pending import PendingLogins
from server.auth.sshcheck import SshChecks
from server.metrics import Metrics
from server.protocol.keys import MachinePublic
from server.sources.repo import RepoStatus
from server.store.interface import Store
from server.tailnet import NodeRegistry, Tailnet, UserRegistry
from server.webhooks.source import EventSource

if TYPE_CHECKING:
    from server.oidc.login import OidcLogin  # authlib: loaded only when OIDC is configured

__all__ = ["WebDeps", "parse_duration"]


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
    # The files of the commit being served (gitctl `Documents`), read on demand,
    # for the policy file of `/api/v2/…/acl`; None when they cannot be read.
    documents: Callable[[], Awaitable[Any]] | None = None
    logins: PendingLogins | None = None  # interactive logins: the register page, approval
    oidc: OidcLogin | None = None  # logins through an identity provider: its two routes
    ssh_checks: SshChecks | None = None  # SSH check mode: the check page, approval
    events: EventSource | None = None  # webhook events of admin actions (keys, approvals)
    # The commit lifecycle's canary rollout: promote(reason) / abort(reason).
    rollout: Rollout | None = None
    users: UserRegistry | None = None  # runtime users: listed, deleted


class Rollout(Protocol):
    def promote(self, reason: str) -> None: ...
    def abort(self, reason: str) -> None: ...


def parse_duration(text: str) -> timedelta:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    text = text.strip()
    if not text or text[-1] not in units or not text[:-1].isdigit():
        raise ValueError(f"bad duration {text!r}: use a number and a unit, e.g. 90d, 12h, 30m")
    return timedelta(seconds=int(text[:-1]) * units[text[-1]])
