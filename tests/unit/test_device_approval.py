"""Device approval (settings.yaml `device_approval: required`): every new node,
pre-auth key or interactive login, waits for an operator before it sees peers
or is seen; the approval reaches its open map poll without a restart."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

from server.admin_client import SocketTarget, call
from server.protocol.keys import MachinePrivate, NodePrivate
from server.store import SqlStore
from server.store.model import Registration
from tests.unit.control_client import (
    T0,
    USERS,
    ControlClient,
    Device,
    async_test,
    join,
    poll,
    preauth_key,
    running_server,
)

FILES = {"users.yaml": USERS, "settings.yaml": "device_approval: required\n"}


@async_test
async def test_a_node_with_a_key_waits_for_approval_then_sees_and_is_seen(tmp_path: Path) -> None:
    async with running_server(tmp_path, files=FILES) as srv:
        sock = SocketTarget(srv.config.socket_path)
        first = Device("first")
        fclient = await join(srv, first)
        node = srv.registry.by_node_key(first.node.public())
        assert node is not None and node.approved is False
        await asyncio.to_thread(call, sock, "POST", f"/api/v1/nodes/{node.id}/approve")
        fstream = await fclient.map_stream(first.map_body())
        assert (await fstream.next())["Node"]["MachineAuthorized"] is True

        dev = Device("laptop")
        client = await ControlClient.connect(srv.port, dev.machine)
        status, reply = await client.register(dev.register_body(preauth_key(srv)))
        assert status == 200 and reply["MachineAuthorized"] is False
        stream = await client.map_stream(dev.map_body())
        waiting = await stream.next()
        assert waiting["Node"]["MachineAuthorized"] is False and waiting["Peers"] == []
        laptop = srv.registry.by_node_key(dev.node.public())
        assert laptop is not None
        listed = await asyncio.to_thread(call, sock, "GET", f"/api/v1/nodes/{laptop.id}")
        assert listed["approved"] is False

        answer = await asyncio.to_thread(call, sock, "POST", f"/api/v1/nodes/{laptop.id}/approve")
        assert answer["approved"] is True
        full = await stream.next()
        assert full["Node"]["MachineAuthorized"] is True
        assert [p["Name"].split(".")[0] for p in full["Peers"]] == ["first"]
        seen = await fstream.wait_for(lambda m: "PeersChanged" in m or "Peers" in m)
        assert laptop.id in [p["ID"] for p in seen.get("PeersChanged", seen.get("Peers", []))]
        await client.close()


@async_test
async def test_nodes_join_at_once_without_the_setting(tmp_path: Path) -> None:
    async with running_server(tmp_path) as srv:
        dev = Device("laptop")
        _, _, first = await poll(srv, dev)
        assert first["Node"]["MachineAuthorized"] is True
        node = srv.registry.by_node_key(dev.node.public())
        assert node is not None and node.approved


@async_test
async def test_an_interactive_login_also_waits_for_device_approval(tmp_path: Path) -> None:
    async with running_server(tmp_path, files=FILES) as srv:
        dev = Device("laptop")
        client = await ControlClient.connect(srv.port, dev.machine)
        _, reply = await client.register(dev.register_body())
        body = dev.register_body()
        body["Followup"] = reply["AuthURL"]
        waiting = asyncio.create_task(client.register(body))
        await asyncio.sleep(0.05)
        srv.logins.complete(reply["AuthURL"].rsplit("/", 1)[1], "alice")
        _, reply = await asyncio.wait_for(waiting, 5)
        assert reply["MachineAuthorized"] is False
        await client.close()


def test_the_approved_flag_is_kept_by_either_backend(store: SqlStore) -> None:
    machine, key = MachinePrivate.generate().public(), NodePrivate.generate().public()
    registration = Registration(
        machine_key=machine, node_key=key, hostname="laptop", user="alice", now=T0, approved=False
    )
    node = store.create_node(registration)
    assert store.get_node(node.id).approved is False  # type: ignore[union-attr]
    assert store.set_node_approved(node.id, True).approved is True
    again = store.reregister_node(
        node.id, replace(registration, node_key=NodePrivate.generate().public(), approved=True)
    )
    assert again.approved is True  # logging in again does not ask for approval again
