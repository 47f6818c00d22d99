"""The OIDC callback against the pending-login seam, in process: a login completes with
the user and the groups its ID token carried; a refused identity refuses the login with
the reason the client shows and logs one line naming the check; a state works once.
The provider is a stand-in that mints tokens with the test's own key; the real one
(Dex) is in tests/e2e/test_oidc_login.py."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from server.auth.pending import PendingLogins
from server.oidc.login import OidcLogin
from server.oidc.provider import Metadata, Provider
from server.oidc.refusal import Refusal
from server.store import open_store
from server.tailnet import NodeRegistry
from tests.unit.control_client import FakeClock
from tests.unit.test_oidc import JWKS, SETTINGS, token
from tests.unit.test_pending_logins import begin, make


class StandIn(Provider):
    """Answers as a provider would: the code is the ID token's claims by name."""

    def __init__(self, claims: dict[str, dict[str, Any]]) -> None:
        super().__init__(SETTINGS)
        self.claims = claims
        self.nonce = ""

    async def metadata(self) -> Metadata:
        return Metadata("http://127.0.0.1:5556/dex/auth", "unused", "unused")

    async def keys(self, *, refresh: bool = False) -> dict[str, Any]:
        return JWKS

    async def exchange(self, code: str, code_verifier: str) -> str:
        return token(nonce=self.nonce, iat=NOW, exp=NOW + 300, **self.claims[code])


T0_CLOCK = FakeClock()
NOW = int(T0_CLOCK().timestamp())


def scenario(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, **settings: Any
) -> tuple[OidcLogin, StandIn, PendingLogins, NodeRegistry, dict[str, tuple[str, ...]]]:
    store = open_store(tmp_path / "s.sqlite")
    clock = FakeClock()
    logins, registry = make(store, clock)
    provider = StandIn(
        {
            "alice": {"email": "alice@example.com", "groups": ["eng"]},
            "carol": {"email": "carol@other.org", "groups": ["eng"]},
        }
    )
    recorded: dict[str, tuple[str, ...]] = {}
    oidc = OidcLogin(
        replace(SETTINGS, **settings),
        provider,
        logins,
        users=lambda: {"alice@example.com": "alice", "carol@other.org": "carol"},
        record_groups=recorded.__setitem__,
        clock=clock,
        log=logging.getLogger("tailnetd.test"),
    )
    caplog.set_level(logging.INFO, "tailnetd.test")
    return oidc, provider, logins, registry, recorded


def start(oidc: OidcLogin, provider: StandIn, auth_id: str) -> str:
    url = asyncio.run(oidc.start(auth_id))
    assert url is not None
    q = parse_qs(urlsplit(url).query)
    provider.nonce = q["nonce"][0]
    return q["state"][0]


def test_a_login_completes_with_the_user_and_its_groups(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    oidc, provider, logins, registry, recorded = scenario(tmp_path, caplog)
    _, node_key, login = begin(logins, FakeClock())
    state = start(oidc, provider, login.auth_id)
    who = asyncio.run(oidc.finish("alice", state, ""))
    assert (who.user, who.groups) == ("alice", ("group:eng",))
    assert recorded == {"alice@example.com": ("group:eng",)}
    done = logins.get(login.auth_id)
    assert done is not None and done.state == "approved"
    node = registry.by_node_key(node_key)
    assert node is not None and node.user == "alice"
    with pytest.raises(Refusal) as replayed:
        asyncio.run(oidc.finish("alice", state, ""))
    assert replayed.value.check == "state"


def test_a_refused_identity_refuses_the_login_and_logs_the_check(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    oidc, provider, logins, _, recorded = scenario(
        tmp_path, caplog, allowed_domains=frozenset({"example.com"})
    )
    _, _, login = begin(logins, FakeClock())
    state = start(oidc, provider, login.auth_id)
    with pytest.raises(Refusal) as exc:
        asyncio.run(oidc.finish("carol", state, ""))
    assert exc.value.check == "allowed_domains" and "carol@other.org" in exc.value.message
    done = logins.get(login.auth_id)
    assert done is not None and done.state == "refused" and "other.org" in done.reason
    assert recorded == {}
    lines = [r.getMessage() for r in caplog.records if "oidc" in r.getMessage()]
    assert lines == [f"oidc: login {login.auth_id} refused: check allowed_domains failed for "
                     "carol@other.org"]  # fmt: skip


def test_a_login_that_is_not_waiting_is_not_sent_to_the_provider(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    oidc, *_ = scenario(tmp_path, caplog)
    assert asyncio.run(oidc.start("no-such-login")) is None
