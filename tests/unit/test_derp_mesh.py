"""Two DERP servers of one region meshed with tailscale's mesh protocol:
clients on different servers reach each other, and learn when one leaves."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os

import pytest

from server.edge.derp_mesh import mesh_with
from server.edge.derp_server import DerpServer
from server.protocol import derp
from server.protocol.derp import (
    ClientInfo,
    DerpConnection,
    DerpProtocolError,
    ForwardPacket,
    FrameType,
    PeerGoneReason,
    WatchConns,
)
from server.protocol.derp_mesh import MeshClient, PeerGone, PeerPresent, Watching
from server.protocol.keys import NodePrivate, NodePublic
from tests.unit.test_derp_server import Client, front_door

MESH_KEY = "ab" * 32
LOG = logging.getLogger("test")
A, B = NodePublic(bytes(range(32))), NodePublic(bytes(range(32, 64)))


def test_mesh_frames_match_the_wire_layout() -> None:
    # derp.go: framePeerPresent = 32B key + 18B ip:port + 1B flags;
    # frameForwardPacket = 32B src + 32B dst + packet; frameWatchConns has no payload.
    present = derp.peer_present_frame(A)
    assert present[:5] == bytes([0x09, 0, 0, 0, 51]) and present[-1] == 1
    assert derp.parse_peer_present(present[5:]) == (A, 1)
    assert derp.parse_peer_present(A.raw) == (A, 0)  # an older server: the key alone
    forward = derp.forward_packet_frame(A, B, b"hi")
    assert forward == bytes([0x0A, 0, 0, 0, 66]) + A.raw + B.raw + b"hi"
    assert derp.parse_forward_packet(forward[5:]) == (A, B, b"hi")
    assert derp.watch_conns_frame() == bytes([0x10, 0, 0, 0, 0])
    with pytest.raises(DerpProtocolError):
        derp.parse_forward_packet(A.raw)


def _pair(server_mesh_key: str | None, client_mesh_key: str) -> tuple[DerpConnection, MeshClient]:
    server_key = NodePrivate.generate()
    conn = DerpConnection(server_key, rng=os.urandom, now=0.0, mesh_key=server_mesh_key)
    client = MeshClient(NodePrivate.generate(), client_mesh_key, rng=os.urandom)
    return conn, client


def test_mesh_frames_need_the_mesh_key_byte_at_a_time() -> None:
    conn, client = _pair(MESH_KEY, MESH_KEY)
    client.receive_data(conn.data_to_send())
    hello = conn.receive_data(client.data_to_send())
    assert conn.can_mesh and len(hello) == 1
    conn.accept(0.0)
    assert client.receive_data(conn.data_to_send()) == [Watching(conn._key.public())]
    client.forward(A, B, b"packet")
    events = [e for byte in client.data_to_send() for e in conn.receive_data(bytes([byte]))]
    assert events == [WatchConns(), ForwardPacket(A, B, b"packet")]
    conn.send_peer_present(A)
    conn.send_peer_gone(A, PeerGoneReason.DISCONNECTED)
    assert client.receive_data(conn.data_to_send() + b"\x06") == [
        PeerPresent(A),
        PeerGone(A, PeerGoneReason.DISCONNECTED),
    ]

    for ours, theirs in ((MESH_KEY, "cd" * 32), (None, MESH_KEY), (MESH_KEY, "")):
        conn, client = _pair(ours, theirs)
        client.receive_data(conn.data_to_send())
        conn.receive_data(client.data_to_send())
        conn.accept(0.0)
        client.receive_data(conn.data_to_send())
        assert not conn.can_mesh
        with pytest.raises(DerpProtocolError, match="mesh key"):
            conn.receive_data(client.data_to_send())


async def _until(check: object, seconds: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not check():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


def test_clients_on_two_meshed_servers_exchange_packets() -> None:
    async def main() -> None:
        servers = [
            DerpServer(
                NodePrivate.generate(), is_allowed=lambda k: True, mesh_key=MESH_KEY, log=LOG
            )
            for _ in range(2)
        ]
        fronts = [await front_door(s) for s in servers]
        meshes = [
            asyncio.create_task(
                mesh_with(
                    servers[i],
                    f"http://127.0.0.1:{fronts[1 - i][1]}",
                    key=NodePrivate.generate(),
                    mesh_key=MESH_KEY,
                    log=LOG,
                )
            )
            for i in range(2)
        ]
        a, b = Client(fronts[0][1]), Client(fronts[1][1])
        try:
            await a.handshake()
            await b.handshake()
            # Each server learned the other's client through WatchConns/PeerPresent.
            await _until(lambda: b.public in servers[0]._forwarders)
            await _until(lambda: a.public in servers[1]._forwarders)
            a.send(derp.send_packet_frame(b.public, b"hello b"))
            frame = await b.next_not_keepalive()
            assert frame.type == FrameType.RECV_PACKET
            assert derp.split_key(frame.payload) == (a.public, b"hello b")
            b.send(derp.send_packet_frame(a.public, b"hello a"))
            frame = await a.next_not_keepalive()
            assert derp.split_key(frame.payload) == (b.public, b"hello a")
            assert servers[0].stats().forwarded == 1 and servers[1].stats().forwarded_in == 1
            # a leaves: b, who heard from it, learns it is gone.
            await a.close()
            frame = await b.next_not_keepalive()
            assert frame.type == FrameType.PEER_GONE
            assert derp.parse_peer_gone(frame.payload) == (a.public, PeerGoneReason.DISCONNECTED)
            assert a.public not in servers[1]._forwarders
            await b.close()
        finally:
            for task in meshes:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            for server, (listener, _) in zip(servers, fronts, strict=True):
                await server.close()
                listener.close()
                await listener.wait_closed()

    asyncio.run(asyncio.wait_for(main(), 30))


def test_a_client_without_the_mesh_key_cannot_watch() -> None:
    async def main() -> None:
        server = DerpServer(NodePrivate.generate(), is_allowed=lambda k: True, mesh_key=MESH_KEY)
        listener, port = await front_door(server)
        client = Client(port)
        try:
            await client.handshake()
            client.send(derp.watch_conns_frame())
            with pytest.raises((EOFError, ConnectionError)):
                while True:
                    await client.frame()
        finally:
            await client.close()
            await server.close()
            listener.close()
            await listener.wait_closed()

    asyncio.run(asyncio.wait_for(main(), 30))


def test_client_info_carries_the_mesh_key_as_tailscale_names_it() -> None:
    assert b'"meshKey":"' + MESH_KEY.encode() in ClientInfo(2, True, MESH_KEY).to_json()


def test_the_derp_map_lists_every_replica_as_a_node_of_the_region() -> None:
    from server.wire import DerpRegion
    from server.wire.builders import derp_map_json

    region = DerpRegion(999, "t", "t", "127.0.0.1", 8080, 0, replicas=(("127.0.0.2", 8081),))
    nodes = derp_map_json([region])["Regions"]["999"]["Nodes"]
    assert [(n["Name"], n["HostName"], n["DERPPort"]) for n in nodes] == [
        ("999a", "127.0.0.1", 8080),
        ("999b", "127.0.0.2", 8081),
    ]
