"""What a node's client and its DERP connection see when the node stops being
served: deleted, expired or logged out, or its user removed from git."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import git
import httpx

from server.app import Server
from server.protocol.keys import NodePrivate
from tests.unit.control_client import (
    USERS,
    Device,
    FakeClock,
    async_test,
    join,
    poll,
    running_server,
)
from tests.unit.test_derp_server import Client as DerpClient

BOB = "  - {name: bob, email: bob@example.com, display_name: Bob}\n"


async def derp_for(srv: Server, device: Device) -> DerpClient:
    client = DerpClient(srv.port, device.node)
    await client.handshake()
    return client


async def refused(srv: Server, key: NodePrivate) -> bool:
    """True when the DERP server closes a connection made with `key`."""
    client = DerpClient(srv.port, key)
    try:
        await client.handshake()
        await client.roundtrip()
    except (EOFError, ConnectionError, asyncio.IncompleteReadError):
        return True
    finally:
        await client.close()
    return False


async def dropped(client: DerpClient) -> bool:
    try:
        await client.roundtrip()
    except (EOFError, ConnectionError):
        return True
    return False


def node_id(srv: Server, device: Device) -> int:
    node = srv.registry.by_node_key(device.node.public())
    assert node is not None
    return node.id


@async_test
async def test_derp_drops_and_refuses_an_expired_node(tmp_path: Path) -> None:
    async with running_server(tmp_path) as srv:
        dev = Device("laptop")
        await (await join(srv, dev)).close()
        relay = await derp_for(srv, dev)
        assert not await dropped(relay)
        srv.registry.set_key_expiry(node_id(srv, dev), srv.clock())
        assert await dropped(relay)
        await relay.close()
        assert await refused(srv, dev.node)


@async_test
async def test_derp_drops_and_refuses_a_logged_out_node(tmp_path: Path) -> None:
    async with running_server(tmp_path) as srv:
        dev = Device("laptop")
        client = await join(srv, dev)
        relay = await derp_for(srv, dev)
        status, reply = await client.register(dev.register_body(expiry="1970-01-01T00:02:03Z"))
        assert status == 200 and reply["NodeKeyExpired"] is True
        assert await dropped(relay)
        await relay.close()
        assert await refused(srv, dev.node)


@async_test
async def test_derp_drops_and_refuses_a_deleted_node(tmp_path: Path) -> None:
    async with running_server(tmp_path) as srv:
        dev, other = Device("laptop"), Device("desktop")
        await (await join(srv, dev)).close()
        await (await join(srv, other)).close()
        relay = await derp_for(srv, dev)
        srv.registry.remove(node_id(srv, dev))
        assert await dropped(relay)
        await relay.close()
        assert await refused(srv, dev.node)
        assert not await refused(srv, other.node)  # the others keep relaying


@async_test
async def test_a_deleted_node_is_told_to_log_in_once_and_cheaply(tmp_path: Path) -> None:
    async with running_server(tmp_path) as srv:
        dev = Device("laptop")
        client, stream, first = await poll(srv, dev)
        srv.registry.remove(first["Node"]["ID"])
        await stream.body()
        assert stream.ended
        for _ in range(3):  # tailscaled retries: each gets the same short answer
            again = await client.map_stream(dev.map_body())
            assert again.status == 200
            msg = await again.next()
            assert msg["Node"]["Key"] == dev.node.public().text
            assert msg["Node"]["KeyExpiry"].startswith("1970-")  # NeedsLogin on the client
            assert msg["Peers"] == [] and msg["Node"]["Addresses"] == []
            await again.body()
            assert again.ended
        assert srv.store.list_nodes() == []  # nothing was written on its behalf


@async_test
async def test_a_commit_that_removes_a_user_cuts_their_nodes_off(tmp_path: Path) -> None:
    async with running_server(tmp_path) as srv:
        alice, bob = Device("alice-laptop"), Device("bob-laptop")
        client, stream, _ = await poll(srv, alice)
        bob_client = await join(srv, bob, auth_key=_key(srv, "bob"))
        bob_stream = await bob_client.map_stream(bob.map_body())
        await bob_stream.next()
        await stream.wait_for(lambda m: "PeersChanged" in m)
        relay = await derp_for(srv, bob)

        _commit_users(srv, USERS.replace(BOB, ""))
        await srv.sync_now()

        msg = await stream.wait_for(lambda m: "PeersRemoved" in m)
        assert msg["PeersRemoved"] == [node_id(srv, bob)]
        await bob_stream.body()
        assert bob_stream.ended
        assert await dropped(relay)
        await relay.close()
        transport = httpx.AsyncHTTPTransport(uds=str(srv.config.socket_path))
        async with httpx.AsyncClient(transport=transport, base_url="http://tailnetd") as admin:
            status = (await admin.get("/api/v1/status")).json()
        assert status["serving"] == srv.repo.head()
        assert [(n["name"], n["user"]) for n in status["cut_off"]] == [("bob-laptop", "bob")]
        again = await bob_client.map_stream(bob.map_body())
        told = await again.next()
        assert told["Node"]["KeyExpiry"].startswith("1970-")


def _key(srv: Server, user: str) -> str:
    from tests.unit.control_client import preauth_key

    return preauth_key(srv, user)


def _commit_users(srv: Server, text: str) -> None:
    path = Path(srv.config.repo)
    (path / "tailnet.d" / "users.yaml").write_text(text)
    with git.Repo(path) as repo:
        repo.index.add(["tailnet.d/users.yaml"])
        repo.index.commit("remove bob")


EXPIRING = """{
  "acls": [
    {"action": "accept", "src": ["alice@example.com"], "dst": ["alice@example.com:*"]},
    {"action": "accept", "src": ["bob@example.com"], "dst": ["alice@example.com:22"],
     "expires": "2025-06-01T12:30:00Z"},
  ],
}
"""


@async_test
async def test_an_expiring_rule_leaves_the_maps_at_its_instant(tmp_path: Path) -> None:
    clock = FakeClock()  # 12:00; bob's rule ends at 12:30
    files = {"users.yaml": USERS, "policy.hujson": EXPIRING}
    async with running_server(tmp_path, files=files, clock=clock) as srv:
        alice, bob = Device("alice-laptop"), Device("bob-laptop")
        client, stream, _ = await poll(srv, alice)
        bob_client = await join(srv, bob, auth_key=_key(srv, "bob"))
        msg = await stream.wait_for(lambda m: "PeersChanged" in m)
        assert [p["Name"].split(".")[0] for p in msg["PeersChanged"]] == ["bob-laptop"]

        clock.advance(timedelta(minutes=31))  # no commit: only time passes
        msg = await stream.wait_for(lambda m: "PeersRemoved" in m)
        assert msg["PeersRemoved"] == [node_id(srv, bob)]
        await bob_client.close()


@async_test
async def test_status_names_the_nodes_streaming_here(tmp_path: Path) -> None:
    """Replicas behind a load balancer: which one holds a client's stream."""
    async with running_server(tmp_path) as srv:
        transport = httpx.AsyncHTTPTransport(uds=str(srv.config.socket_path))
        async with httpx.AsyncClient(transport=transport, base_url="http://tailnetd") as admin:
            assert (await admin.get("/api/v1/status")).json()["streaming_here"] == []
            _, _, first = await poll(srv, Device("laptop"))
            status = (await admin.get("/api/v1/status")).json()
        assert status["streaming_here"] == [first["Node"]["ID"]]
