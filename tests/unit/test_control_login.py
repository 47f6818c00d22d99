"""Interactive login over the real control protocol, in process: a register
without a key gets a login URL on this server; the client's Followup request
waits on the same HTTP/2 connection and returns once an operator approves."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from datetime import timedelta
from pathlib import Path
from typing import Any

from server.admin_client import SocketTarget, call
from server.protocol.keys import NodePrivate
from tests.unit.control_client import (
    LOGOUT_EXPIRY,
    ControlClient,
    Device,
    FakeClock,
    async_test,
    join,
    running_server,
)


def followup(device: Device, url: str) -> dict[str, Any]:
    body = device.register_body()
    body["Followup"] = url
    return body


async def start_login(srv: Any, dev: Device) -> tuple[ControlClient, str]:
    client = await ControlClient.connect(srv.port, dev.machine)
    status, reply = await client.register(dev.register_body())
    assert status == 200 and "Error" not in reply, reply
    return client, reply["AuthURL"]


@async_test
async def test_a_register_without_a_key_gets_a_login_url_on_this_server(tmp_path: Path) -> None:
    async with running_server(tmp_path) as srv:
        dev = Device("laptop")
        client, url = await start_login(srv, dev)
        assert url.startswith(f"http://127.0.0.1:{srv.port}/register/")
        page = await asyncio.to_thread(_fetch, url)
        auth_id = url.rsplit("/", 1)[1]
        assert f"tailnetd nodes register --user NAME {auth_id}" in page
        assert srv.store.list_nodes() == []  # nothing is written before approval
        await client.close()


@async_test
async def test_the_followup_waits_until_the_operator_approves(tmp_path: Path) -> None:
    async with running_server(tmp_path) as srv:
        dev = Device("laptop")
        client, url = await start_login(srv, dev)
        waiting = asyncio.create_task(client.register(followup(dev, url)))
        await asyncio.sleep(0.2)
        assert not waiting.done()
        auth_id = url.rsplit("/", 1)[1]
        sock = SocketTarget(srv.config.socket_path)
        pending = await asyncio.to_thread(call, sock, "GET", "/api/v1/logins")
        assert [p["auth_id"] for p in pending] == [auth_id]
        body = {"auth_id": auth_id, "user": "alice"}
        node = await asyncio.to_thread(call, sock, "POST", "/api/v1/nodes/register", body)
        status, reply = await asyncio.wait_for(waiting, 5)
        assert status == 200 and reply["MachineAuthorized"] is True
        assert reply["NodeKeyExpired"] is False
        assert reply["User"]["LoginName"] == "alice@example.com"
        assert node["user"] == "alice" and node["name"] == "laptop"
        stored = srv.store.node_by_node_key(dev.node.public())
        assert stored is not None and stored.key_expiry is not None  # settings' node key expiry
        # The client's next request is a plain resume.
        status, reply = await client.register(dev.register_body())
        assert reply["MachineAuthorized"] is True and "AuthURL" not in reply
        await client.close()


@async_test
async def test_an_unapproved_login_expires_with_a_message_for_the_client(tmp_path: Path) -> None:
    clock = FakeClock()
    async with running_server(tmp_path, clock=clock) as srv:
        dev = Device("laptop")
        client, url = await start_login(srv, dev)
        waiting = asyncio.create_task(client.register(followup(dev, url)))
        await asyncio.sleep(0.1)
        clock.advance(timedelta(minutes=10))
        srv.logins.handle_timer(clock())
        status, reply = await asyncio.wait_for(waiting, 5)
        assert "not approved within 10 minutes" in reply["Error"]
        page = await asyncio.to_thread(_fetch, url)
        assert "Login expired" in page
        await client.close()


def _fetch(url: str) -> str:
    try:
        return str(urllib.request.urlopen(url).read().decode())
    except urllib.error.HTTPError as exc:
        return str(exc.read().decode())


@async_test
async def test_registering_an_unknown_login_or_user_is_refused(tmp_path: Path) -> None:
    async with running_server(tmp_path) as srv:
        sock = SocketTarget(srv.config.socket_path)
        dev = Device("laptop")
        client, url = await start_login(srv, dev)
        auth_id = url.rsplit("/", 1)[1]
        for body, words in (
            ({"auth_id": "nope", "user": "alice"}, "unknown"),
            ({"auth_id": auth_id, "user": "mallory"}, "not in tailnet.d"),
        ):
            try:
                await asyncio.to_thread(call, sock, "POST", "/api/v1/nodes/register", body)
            except Exception as exc:  # the admin client raises with the problem's detail
                assert words in str(exc)
            else:
                raise AssertionError("accepted")
        assert srv.store.list_nodes() == []
        await client.close()


@async_test
async def test_an_expired_node_logs_in_again_and_keeps_its_address(tmp_path: Path) -> None:
    clock = FakeClock()
    async with running_server(tmp_path, clock=clock) as srv:
        dev = Device("laptop")
        client = await join(srv, dev)
        before = srv.store.node_by_node_key(dev.node.public())
        await client.register(dev.register_body(expiry=LOGOUT_EXPIRY))
        # `tailscale up` after expiry: a fresh node key, the old one named.
        old, dev.node = dev.node, NodePrivate.generate()
        status, reply = await client.register(dev.register_body(old_node=old))
        url = reply["AuthURL"]
        body = followup(dev, url)
        body["OldNodeKey"] = old.public().text
        waiting = asyncio.create_task(client.register(body))
        srv.logins.complete(url.rsplit("/", 1)[1], "alice")
        status, reply = await asyncio.wait_for(waiting, 5)
        assert reply["NodeKeyExpired"] is False and reply["MachineAuthorized"] is True
        after = srv.store.node_by_node_key(dev.node.public())
        assert before is not None and after is not None
        assert (after.id, after.ipv4, after.ipv6) == (before.id, before.ipv4, before.ipv6)
        assert after.key_expiry is not None and after.key_expiry > clock()
        await client.close()
