"""Node key expiry follows the identity (settings.yaml `oidc_key_expiry`), in process over
the real control protocol: with `token`, a node logged in through the identity provider
gets its ID token's exp as key expiry, while an operator-approved login keeps the
tailnet's node_key_expiry (the default for everyone without the setting); once that
instant passes the client must log in again, and another identity may not take the node
over, while its owner gets the same node back with the new token's expiry."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from server.auth.pending import LoginRefused, ProviderLogin
from server.protocol.keys import NodePrivate
from tests.unit.control_client import (
    USERS,
    ControlClient,
    Device,
    FakeClock,
    async_test,
    running_server,
)
from tests.unit.test_oidc_login import T0_CLOCK, scenario, start
from tests.unit.test_pending_logins import begin

TOKEN = {"users.yaml": USERS, "settings.yaml": "oidc_key_expiry: token\n"}
DEFAULT_SPAN = timedelta(days=180)  # settings.yaml's node_key_expiry when it says nothing


async def login(
    srv: Any, dev: Device, user: str, proof: ProviderLogin | None, old: NodePrivate | None = None
) -> dict[str, Any]:
    """`tailscale up` without a key, completed as `user` (by the provider if `proof`)."""
    client = await ControlClient.connect(srv.port, dev.machine)
    _, reply = await client.register(dev.register_body(old_node=old))
    url = reply["AuthURL"]
    body = dev.register_body(old_node=old)
    body["Followup"] = url
    waiting = asyncio.create_task(client.register(body))
    await asyncio.sleep(0)
    try:
        srv.logins.complete(url.rsplit("/", 1)[1], user, (), proof)
    except LoginRefused:
        pass
    _, reply = await asyncio.wait_for(waiting, 5)
    await client.close()
    return dict(reply)


@async_test
async def test_with_token_expiry_the_key_expires_with_the_id_token(tmp_path: Path) -> None:
    clock = FakeClock()
    async with running_server(tmp_path, files=TOKEN, clock=clock) as srv:
        exp = clock() + timedelta(minutes=5)
        laptop, desk = Device("laptop"), Device("desk")
        reply = await login(srv, laptop, "alice", ProviderLogin("alice@example.com", exp))
        assert reply["MachineAuthorized"] is True and "Error" not in reply
        node = srv.registry.by_node_key(laptop.node.public())
        assert node is not None and node.key_expiry == exp
        # An operator's approval vouches for no token: the tailnet's expiry.
        await login(srv, desk, "bob", None)
        node = srv.registry.by_node_key(desk.node.public())
        assert node is not None and node.key_expiry == clock() + DEFAULT_SPAN


@async_test
async def test_without_the_setting_provider_logins_keep_the_tailnet_expiry(tmp_path: Path) -> None:
    clock = FakeClock()
    async with running_server(tmp_path, clock=clock) as srv:
        laptop = Device("laptop")
        proof = ProviderLogin("alice@example.com", clock() + timedelta(minutes=5))
        await login(srv, laptop, "alice", proof)
        node = srv.registry.by_node_key(laptop.node.public())
        assert node is not None and node.key_expiry == clock() + DEFAULT_SPAN


@async_test
async def test_an_expired_node_logs_in_again_only_as_its_owner(tmp_path: Path) -> None:
    clock = FakeClock()
    async with running_server(tmp_path, files=TOKEN, clock=clock) as srv:
        laptop = Device("laptop")
        exp = clock() + timedelta(minutes=5)
        await login(srv, laptop, "alice", ProviderLogin("alice@example.com", exp))
        before = srv.registry.by_node_key(laptop.node.public())
        assert before is not None
        clock.advance(timedelta(minutes=5))
        # The daemon with its expired key is told so: it shows "needs login".
        client = await ControlClient.connect(srv.port, laptop.machine)
        _, reply = await client.register(laptop.register_body())
        assert reply["NodeKeyExpired"] is True, reply
        await client.close()
        # `tailscale up`: a fresh node key, the old one named; bob signs in.
        old, laptop.node = laptop.node, NodePrivate.generate()
        bob = ProviderLogin("bob@example.com", clock() + timedelta(hours=1))
        reply = await login(srv, laptop, "bob", bob, old)
        assert "alice@example.com" in reply["Error"] and "bob@example.com" in reply["Error"]
        node = srv.registry.get(before.id)
        assert node is not None and node.user == "alice" and node.key_expiry == exp
        # Alice signs in: the same node, her new token's expiry.
        again = clock() + timedelta(hours=1)
        reply = await login(srv, laptop, "alice", ProviderLogin("alice@example.com", again), old)
        assert reply["NodeKeyExpired"] is False and reply["MachineAuthorized"] is True
        after = srv.registry.by_node_key(laptop.node.public())
        assert after is not None and (after.id, after.ipv4) == (before.id, before.ipv4)
        assert after.user == "alice" and after.key_expiry == again


def test_the_callback_hands_the_id_token_s_expiry_to_the_login(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    oidc, provider, logins, _, _ = scenario(tmp_path, caplog)
    _, _, pending = begin(logins, FakeClock())
    asyncio.run(oidc.finish("alice", start(oidc, provider, pending.auth_id), ""))
    done = logins.get(pending.auth_id)
    assert done is not None and done.state == "approved"
    # The stand-in provider's tokens expire 300 s after they are issued.
    assert done.provider == ProviderLogin("alice@example.com", T0_CLOCK() + timedelta(seconds=300))
