"""OIDC logins wired to the running server: the callback on the URL people
reach, the tailnet's git users, runtime users admitted, login groups kept."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

from server.auth.pending import PendingLogins
from server.auth.sshcheck import SshChecks
from server.oidc.settings import OidcSettings
from server.store.interface import Store
from server.tailnet import Tailnet, UserRegistry

if TYPE_CHECKING:
    from server.oidc.login import OidcLogin
    from server.oidc.provider import Provider

__all__ = ["oidc_login"]


def oidc_login(
    settings: OidcSettings,
    *,
    public_url: str,
    logins: PendingLogins,
    ssh_checks: SshChecks,
    tailnet: Tailnet,
    users: UserRegistry,
    store: Store,
    clock: Callable[[], datetime],
    log: logging.Logger,
) -> tuple[OidcLogin, Provider]:
    """Logins through the identity provider, and the provider (whose `aclose()`
    the server awaits when it stops). `public_url`: where people reach this server (the bound port
    when listening on 0)."""
    settings = dataclasses.replace(settings, server_url=public_url)
    from server.oidc.login import OidcLogin  # authlib: only when OIDC is configured
    from server.oidc.provider import Provider

    def record_groups(email: str, groups: tuple[str, ...]) -> None:
        """A login's identity-provider groups: kept, and applied to the maps now."""
        store.set_login_groups(email, groups, clock())
        tailnet.set_login_groups(email, groups)

    provider = Provider(settings)
    login = OidcLogin(
        settings,
        provider,
        logins,
        users=lambda: {e.lower(): n for n, (e, _) in tailnet.source.git_users.items()},
        record_groups=record_groups,
        admit_runtime=lambda email: users.admit(email, clock()),
        admit_unknown=lambda: bool(
            tailnet.source.settings and tailnet.source.settings.oidc_admit_unknown
        ),
        clock=clock,
        log=log,
        ssh_checks=ssh_checks,
    )
    return login, provider
