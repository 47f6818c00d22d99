"""SSH check mode through the identity provider, with a fake clock: a held check sends
the person to the provider with Tailscale's own message; only the owner of the
connecting node (by verified email) approves it, then the rule's checkPeriod runs; a
different identity is refused with a page naming both and one log line; an expired
check or flow, and a replayed state, approve nothing. The provider is the stand-in of
test_oidc_login; the real one (Dex) is in tests/e2e/test_ssh_check_oidc.py."""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from server.auth.sshcheck import SshChecks
from server.oidc.login import OidcLogin
from server.oidc.refusal import Refusal
from server.store import open_store
from tests.unit.control_client import FakeClock
from tests.unit.test_oidc import SETTINGS
from tests.unit.test_oidc_login import StandIn
from tests.unit.test_pending_logins import make as make_logins

TIMEOUT = timedelta(minutes=10)
HOUR = timedelta(hours=1)
USERS = {"alice@example.com": "alice", "bob@example.com": "bob"}


@dataclass
class Scene:
    clock: FakeClock
    checks: SshChecks
    oidc: OidcLogin
    provider: StandIn


@pytest.fixture
def scene(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> Scene:
    caplog.set_level(logging.INFO, "tailnetd.test")
    clock = FakeClock()
    log = logging.getLogger("tailnetd.test")
    checks = SshChecks(
        base_url=lambda: "https://ctl.example",
        timeout=lambda: TIMEOUT,
        rng=os.urandom,
        log=log,
        via_provider=True,
    )
    logins, _ = make_logins(open_store(tmp_path / "s.sqlite"), clock)
    provider = StandIn(
        {
            "alice": {"email": "alice@example.com"},
            "bob": {"email": "bob@example.com"},
            "unverified-alice": {"email": "alice@example.com", "email_verified": False},
        }
    )
    oidc = OidcLogin(
        SETTINGS,
        provider,
        logins,
        users=lambda: USERS,
        record_groups=lambda email, groups: None,
        clock=clock,
        log=log,
        ssh_checks=checks,
    )
    return Scene(clock, checks, oidc, provider)


def hold(scene: Scene, owner: str | None = "alice", src: int = 1) -> tuple[str, dict[str, Any]]:
    action = scene.checks.action(src, 2, "root", owner, HOUR, scene.clock())
    return str(action["holdAndDelegate"].rsplit("auth_id=", 1)[1]), action


def to_provider(scene: Scene, auth_id: str) -> str:
    """The state of a browser sent to the provider for check `auth_id`."""
    url = asyncio.run(scene.oidc.start_check(auth_id))
    assert url is not None and url.startswith("http://127.0.0.1:5556/dex/auth?")
    q = parse_qs(urlsplit(url).query)
    scene.provider.nonce = q["nonce"][0]
    return q["state"][0]


def oidc_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("oidc:")]


def test_the_owner_signing_in_lets_the_session_in_and_the_period_starts(scene: Scene) -> None:
    auth_id, action = hold(scene)
    url = f"https://ctl.example/ssh/check/{auth_id}"
    assert action["message"] == (
        f"# Tailscale SSH requires an additional check.\r\n# To authenticate, visit: {url}\r\n"
    )

    state = to_provider(scene, auth_id)

    async def run() -> dict[str, Any]:
        waiter = asyncio.create_task(scene.checks.wait(auth_id, 2))
        await asyncio.sleep(0)
        assert not waiter.done()  # pending: the session is held
        who, check = await scene.oidc.finish_check("alice", state, "")
        assert who.email == "alice@example.com" and check.state == "approved"
        return await asyncio.wait_for(waiter, 1)

    assert asyncio.run(run())["accept"] is True
    scene.clock.advance(HOUR - timedelta(seconds=1))
    assert scene.checks.action(1, 2, "root", "alice", HOUR, scene.clock())["accept"] is True
    scene.clock.advance(timedelta(seconds=1))
    assert "holdAndDelegate" in hold(scene)[1]  # the period is over: checked again


def test_another_identity_is_refused_with_both_named_and_one_log_line(
    scene: Scene, caplog: pytest.LogCaptureFixture
) -> None:
    auth_id, _ = hold(scene)
    state = to_provider(scene, auth_id)
    caplog.clear()
    with pytest.raises(Refusal) as refused:
        asyncio.run(scene.oidc.finish_check("bob", state, ""))
    assert refused.value.check == "owner"
    assert "bob@example.com" in refused.value.message
    assert "alice@example.com" in refused.value.message
    check = scene.checks.get(auth_id)
    assert check is not None and check.state == "refused"
    answer = asyncio.run(scene.checks.wait(auth_id, 2))
    assert answer["reject"] is True and "bob@example.com" in answer["message"]
    assert [r.getMessage() for r in caplog.records] == [
        f"oidc: ssh check {auth_id} refused: check owner failed for bob@example.com "
        "(the connection comes from a node of alice@example.com)"
    ]


def test_an_unverified_email_is_not_the_owner(
    scene: Scene, caplog: pytest.LogCaptureFixture
) -> None:
    auth_id, _ = hold(scene)
    with pytest.raises(Refusal) as refused:
        asyncio.run(scene.oidc.finish_check("unverified-alice", to_provider(scene, auth_id), ""))
    assert refused.value.check == "email_verified"
    assert scene.checks.get(auth_id).state == "refused"  # type: ignore[union-attr]
    assert oidc_lines(caplog) == [
        f"oidc: ssh check {auth_id} refused: check email_verified failed for alice@example.com"
    ]


def test_a_tagged_source_cannot_be_approved_by_a_person(scene: Scene) -> None:
    auth_id, _ = hold(scene, owner=None)
    with pytest.raises(Refusal, match="tagged device"):
        asyncio.run(scene.oidc.finish_check("alice", to_provider(scene, auth_id), ""))


def test_a_replayed_state_approves_nothing(scene: Scene) -> None:
    auth_id, _ = hold(scene)
    state = to_provider(scene, auth_id)
    asyncio.run(scene.oidc.finish_check("alice", state, ""))
    with pytest.raises(Refusal) as replayed:
        asyncio.run(scene.oidc.finish_check("alice", state, ""))
    assert replayed.value.check == "state"


def test_an_expired_check_is_not_sent_to_the_provider_nor_approved(scene: Scene) -> None:
    auth_id, _ = hold(scene)
    state = to_provider(scene, auth_id)  # the browser left before the check expired
    scene.clock.advance(TIMEOUT)
    scene.checks.handle_timer(scene.clock())
    assert scene.checks.get(auth_id).state == "expired"  # type: ignore[union-attr]
    assert asyncio.run(scene.oidc.start_check(auth_id)) is None
    with pytest.raises(Refusal) as late:
        asyncio.run(scene.oidc.finish_check("alice", state, ""))
    assert late.value.check in ("state", "login")  # the flow expires with the check
    assert asyncio.run(scene.checks.wait(auth_id, 2))["reject"] is True


def test_the_check_page_redirects_to_the_provider_and_the_callback_answers(
    scene: Scene,
) -> None:
    auth_id, _ = hold(scene)
    client = TestClient(Starlette(routes=scene.oidc.routes()))
    start = client.get(f"/ssh/check/{auth_id}", follow_redirects=False)
    assert start.status_code == 302
    q = parse_qs(urlsplit(start.headers["location"]).query)
    scene.provider.nonce = q["nonce"][0]
    done = client.get("/oidc/callback", params={"code": "bob", "state": q["state"][0]})
    assert done.status_code == 403
    assert "bob@example.com" in done.text and "alice@example.com" in done.text
    again = client.get(f"/ssh/check/{auth_id}", follow_redirects=False)
    assert again.status_code == 410 and "refused" in again.text  # no new round trip

    auth_id, _ = hold(scene)
    start = client.get(f"/ssh/check/{auth_id}", follow_redirects=False)
    q = parse_qs(urlsplit(start.headers["location"]).query)
    scene.provider.nonce = q["nonce"][0]
    done = client.get("/oidc/callback", params={"code": "alice", "state": q["state"][0]})
    assert done.status_code == 200 and "SSH login approved" in done.text
    assert scene.checks.get(auth_id).state == "approved"  # type: ignore[union-attr]
