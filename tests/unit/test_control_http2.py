"""HTTP/2 inside Noise as tailscaled uses it: concurrent streams on one
connection, RST_STREAM(CANCEL) ending a long poll, and flow control when a
map is larger than the client's receive window."""

from __future__ import annotations

import asyncio
import json
import os
from datetime import timedelta
from pathlib import Path

import pytest

from bench.loadgen.mapstream import ResponseStream
from server.wire import Hostinfo, Service, decode, encode_json, format_time
from tests.unit.control_client import (
    ControlClient,
    Device,
    FakeClock,
    async_test,
    join,
    poll,
    preauth_key,
    running_server,
)


@async_test
async def test_register_lite_map_and_ping_complete_while_a_map_stream_is_open(
    tmp_path: Path,
) -> None:
    async with running_server(tmp_path, keepalive=0.1) as srv:
        dev = Device("laptop")
        client, stream, _ = await poll(srv, dev)

        status, reply = await client.register(dev.register_body())
        assert status == 200 and reply["MachineAuthorized"] is True
        status, _ = await client.map_lite(dev.map_body(stream=False, endpoints=["192.0.2.1:1"]))
        assert status == 200
        await client.ping()
        # The long poll is still alive after all that.
        assert await stream.next(keepalives=True) is not None
        assert not stream.ended


@async_test
async def test_requests_on_two_connections_interleave(tmp_path: Path) -> None:
    async with running_server(tmp_path) as srv:
        devices = [Device(f"node{i}") for i in range(4)]
        clients = [await ControlClient.connect(srv.port, d.machine) for d in devices]
        keys = [preauth_key(srv) for _ in devices]
        replies = await asyncio.gather(
            *(
                c.register(d.register_body(k))
                for c, d, k in zip(clients, devices, keys, strict=True)
            )
        )
        assert [status for status, _ in replies] == [200] * 4
        assert len({n.ipv4 for n in srv.store.list_nodes()}) == 4


@async_test
async def test_cancelled_map_stream_ends_the_session_and_peers_see_it_offline(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    async with running_server(tmp_path, clock=clock) as srv:
        dev, peer = Device("laptop"), Device("desktop")
        client = await join(srv, dev)
        pclient, pstream, _ = await poll(srv, peer)
        stream = await client.map_stream(dev.map_body())
        me = (await stream.next())["Node"]["ID"]
        online = await pstream.wait_for(lambda m: "PeersChanged" in m)
        assert online["PeersChanged"][0]["Online"] is True

        clock.advance(timedelta(minutes=5))
        stream.cancel()  # RST_STREAM(CANCEL), the connection stays up
        offline = await pstream.wait_for(lambda m: "PeersChanged" in m)
        assert [(p["ID"], p["Online"]) for p in offline["PeersChanged"]] == [(me, False)]
        assert offline["PeersChanged"][0]["LastSeen"] == format_time(clock.now)
        assert not srv.tailnet.is_online(me)

        # The same connection still serves requests, and a new poll brings it back.
        again = await client.map_stream(dev.map_body())
        assert "Node" in await again.next()
        back = await pstream.wait_for(lambda m: "PeersChanged" in m)
        assert back["PeersChanged"][0]["Online"] is True


@async_test
async def test_map_larger_than_the_client_window_arrives_whole(tmp_path: Path) -> None:
    async with running_server(tmp_path) as srv:
        dev = Device("laptop")
        # A 1 KiB stream window, and a map far above the 65535-byte connection
        # window: random hex in Hostinfo (service descriptions, each within
        # the wire limits) does not compress below that.
        client = await join(srv, dev, window=1024)
        node = srv.store.node_by_node_key(dev.node.public())
        assert node is not None
        services = tuple(
            Service(proto="tcp", port=i, description=os.urandom(500).hex()) for i in range(150)
        )
        hostinfo = Hostinfo(hostname="laptop", os="linux", services=services)
        srv.registry.update_from_map(node, now=srv.clock(), hostinfo=hostinfo)
        body = dev.map_body()
        del body["Hostinfo"]
        stream = await client.map_stream(body)
        msg = await stream.next()
        assert len(stream.raw) > 70_000
        assert msg["Node"]["Hostinfo"]["Services"] == json.loads(encode_json(hostinfo))["Services"]


@async_test
async def test_request_body_larger_than_the_default_window_is_received(tmp_path: Path) -> None:
    async with running_server(tmp_path) as srv:
        dev = Device("laptop")
        client = await join(srv, dev)
        # Hostinfo with many services; 200 KB is above the 65535-byte default
        # stream window, so the server must open its window.
        services = [{"Proto": "tcp", "Port": i, "Description": "x" * 1000} for i in range(200)]
        hostinfo = {"Hostname": "laptop", "OS": "linux", "Services": services}
        status, _ = await client.map_lite(dev.map_body(stream=False, hostinfo=hostinfo))
        assert status == 200
        node = srv.store.node_by_node_key(dev.node.public())
        assert node is not None and node.hostinfo == decode(Hostinfo, hostinfo)


@async_test
async def test_response_headers_leave_the_clients_hpack_table_alone(tmp_path: Path) -> None:
    # Control responses' header blocks are encoded without the dynamic table
    # (server/protocol/h2head.py): the client decodes the same headers, and
    # nothing is added to its table for h2's encoder to keep in step with.
    async with running_server(tmp_path) as srv:
        dev = Device("laptop")
        client = await ControlClient.connect(srv.port, dev.machine)
        _, status, reg = await client.request(
            "/machine/register", json.dumps(dev.register_body(preauth_key(srv))).encode()
        )
        assert status == 200 and reg.headers.result()["content-type"] == "application/json"
        stream = await client.map_stream(dev.map_body())
        assert stream.status == 200 and "Node" in await stream.next()
        assert len(client._h2.decoder.header_table.dynamic_entries) == 0
        await client.close()


@async_test
async def test_an_empty_answer_ends_its_stream_on_headers(tmp_path: Path) -> None:
    # A lite map request (every endpoint change) is answered with HEADERS
    # carrying END_STREAM; the stream is closed on both sides, so the
    # connection serves the requests after it.
    async with running_server(tmp_path) as srv:
        dev = Device("laptop")
        client, _, _ = await poll(srv, dev)
        for n in range(3):
            body = dev.map_body(stream=False, endpoints=[f"192.0.2.{n + 1}:1"])
            status, _ = await client.map_lite(body)
            assert status == 200
        await client.ping()


@async_test
async def test_a_malformed_request_is_reset_and_the_connection_serves_on(tmp_path: Path) -> None:
    # Malformed headers are a stream error (server/edge/h2_request_headers.py):
    # the request is never served, and the client's map poll and later
    # requests on the same connection go on (the h2 library closed the connection).
    async with running_server(tmp_path) as srv:
        dev = Device("laptop")
        client, stream, _ = await poll(srv, dev)
        bad_id = client._h2.next_stream_id()
        bad = ResponseStream(asyncio.get_running_loop().create_future())
        client._streams[bad_id] = bad
        headers = [(":method", "POST"), (":scheme", "https"), (":authority", "x")]
        headers.append((":path", "/machine/map"))
        client._h2.send_headers(bad_id, [*headers, ("Upper-Case", "x")], end_stream=True)
        client._flush()
        with pytest.raises(ConnectionError, match="stream reset"):
            await bad.headers
        assert bad.reset_code == 1  # PROTOCOL_ERROR
        status, _ = await client.map_lite(dev.map_body(stream=False, endpoints=["192.0.2.9:1"]))
        assert status == 200
        await client.ping()
        assert not stream.ended
