"""The state of each login sent to the provider: bound to one pending login, single
use, expiring; with its nonce and PKCE (S256, always) verifier.

Time and randomness are passed in. The table is bounded: past ``MAX_FLOWS`` the
oldest flow is dropped (its user sees "this login has expired").
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from authlib.oauth2.rfc6749.parameters import prepare_grant_uri
from authlib.oauth2.rfc7636 import create_s256_code_challenge

from .refusal import Refusal
from .settings import OidcSettings

__all__ = ["MAX_FLOWS", "Flow", "FlowKind", "Flows"]

FlowKind = Literal["login", "ssh_check"]

MAX_FLOWS = 10_000


@dataclass(frozen=True, slots=True)
class Flow:
    auth_id: str  # the pending login this browser round trip completes
    state: str
    nonce: str
    code_verifier: str
    expires: float
    kind: FlowKind = "login"  # what the round trip completes: a login, or an SSH check


class Flows:
    def __init__(
        self, settings: OidcSettings, token: Callable[[int], str] = secrets.token_urlsafe
    ) -> None:
        self._settings = settings
        self._token = token
        self._flows: OrderedDict[str, Flow] = OrderedDict()

    def __len__(self) -> int:
        return len(self._flows)

    def start(
        self, auth_id: str, authorization_endpoint: str, now: float, kind: FlowKind = "login"
    ) -> tuple[Flow, str]:
        """A new flow for ``auth_id`` (a pending login, or an SSH check) and the provider
        URL to send the browser to."""
        self._expire(now)
        while len(self._flows) >= MAX_FLOWS:
            self._flows.popitem(last=False)
        flow = Flow(
            auth_id=auth_id,
            state=self._token(32),
            nonce=self._token(32),
            code_verifier=self._token(48),  # 64 characters: RFC 7636 allows 43..128
            expires=now + self._settings.login_ttl,
            kind=kind,
        )
        self._flows[flow.state] = flow
        s = self._settings
        url = prepare_grant_uri(
            authorization_endpoint,
            s.client_id,
            "code",
            redirect_uri=s.redirect_uri,
            scope=" ".join(s.scopes),
            state=flow.state,
            nonce=flow.nonce,
            code_challenge=create_s256_code_challenge(flow.code_verifier),
            code_challenge_method="S256",
        )
        return flow, str(url)

    def kind(self, state: str) -> FlowKind | None:
        """What the flow ``state`` names completes, without using it up (None: unknown)."""
        flow = self._flows.get(state)
        return None if flow is None else flow.kind

    def take(self, state: str, now: float) -> Flow:
        """The flow ``state`` names, removed: a state works once. Raises Refusal."""
        flow = self._flows.pop(state, None)
        if flow is None:
            raise Refusal(
                "state",
                "This login link is unknown or was already used. Start again from your device.",
            )
        if now >= flow.expires:
            raise Refusal("state", "This login has expired. Start again from your device.")
        return flow

    def _expire(self, now: float) -> None:
        for state in [s for s, f in self._flows.items() if now >= f.expires]:
            del self._flows[state]
