"""/machine/map through the real server stack, in-process: the first full map,
then the deltas a running tailnet produces (joins, endpoint changes,
removals) and keep-alives."""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any

import pytest
import zstandard

from server.protocol.keys import DiscoPublic
from server.protocol.mapframe import MapFrameEncoder
from server.tailnet.session import MapSession
from tests.unit.control_client import Device, async_test, join, poll, running_server

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


@async_test
async def test_first_message_is_a_complete_zstd_framed_map(tmp_path: Path) -> None:
    async with running_server(tmp_path) as srv:
        peer = Device("desktop")
        await (await join(srv, peer)).close()
        dev = Device("laptop")
        client = await join(srv, dev)
        stream = await client.map_stream(dev.map_body())
        assert stream.status == 200
        msg = await stream.next()
        for key in ("Node", "DERPMap", "PacketFilter", "DNSConfig", "UserProfiles", "Peers"):
            assert key in msg, key
        assert msg["Node"]["Key"] == dev.node.public().text
        assert msg["Node"]["DiscoKey"] == dev.disco.text
        assert [p["Name"].split(".")[0] for p in msg["Peers"]] == ["desktop"]
        assert {u["LoginName"] for u in msg["UserProfiles"]} == {"alice@example.com"}
        assert msg["DERPMap"]["Regions"]

        # On the wire: u32 little-endian length, then one zstd frame of the JSON.
        raw = bytes(stream.raw)
        (length,) = struct.unpack_from("<I", raw)
        frame = raw[4 : 4 + length]
        assert frame.startswith(ZSTD_MAGIC)
        assert zstandard.ZstdDecompressor().decompress(frame).startswith(b"{")


@async_test
async def test_a_joining_node_reaches_open_streams_as_peers_changed(tmp_path: Path) -> None:
    async with running_server(tmp_path) as srv:
        dev = Device("laptop")
        client, stream, first = await poll(srv, dev)
        assert "Peers" not in first  # alone in the tailnet

        newcomer = Device("desktop")
        await join(srv, newcomer)
        msg = await stream.wait_for(lambda m: "PeersChanged" in m)
        assert [p["Key"] for p in msg["PeersChanged"]] == [newcomer.node.public().text]
        assert "Peers" not in msg


@async_test
async def test_lite_endpoint_update_is_pushed_to_peers_without_recompiling(tmp_path: Path) -> None:
    async with running_server(tmp_path) as srv:
        dev, peer = Device("laptop"), Device("desktop")
        client = await join(srv, dev)
        pclient, pstream, _ = await poll(srv, peer)
        dstream = await client.map_stream(dev.map_body())
        await dstream.next()
        await pstream.wait_for(lambda m: "PeersChanged" in m)  # dev came online
        views = srv.tailnet.views

        endpoints = ["192.0.2.7:41641", "[2001:db8::7]:41641"]
        status, _ = await client.map_lite(dev.map_body(stream=False, endpoints=endpoints))
        assert status == 200
        msg = await pstream.wait_for(lambda m: "PeersChanged" in m)
        assert [(p["Key"], p["Endpoints"]) for p in msg["PeersChanged"]] == [
            (dev.node.public().text, endpoints)
        ]
        assert srv.tailnet.views is views  # a volatile change compiles nothing


@async_test
async def test_restarted_daemon_s_new_disco_key_reaches_peers(tmp_path: Path) -> None:
    async with running_server(tmp_path) as srv:
        dev, peer = Device("laptop"), Device("desktop")
        client, stream, _ = await poll(srv, dev)
        pclient, pstream, first = await poll(srv, peer)
        assert first["Peers"][0]["DiscoKey"] == dev.disco.text
        stream.cancel()
        # tailscaled restarted: a new disco key, sent on the new streaming poll.
        dev.disco = DiscoPublic(os.urandom(32))
        stream = await client.map_stream(dev.map_body())
        await stream.next()
        msg = await pstream.wait_for(
            lambda m: any(p.get("DiscoKey") == dev.disco.text for p in m.get("PeersChanged", []))
        )
        assert msg["PeersChanged"][0]["Online"] is True


@async_test
async def test_home_derp_survives_hostinfo_without_netinfo(tmp_path: Path) -> None:
    async with running_server(tmp_path) as srv:
        dev, peer = Device("laptop"), Device("desktop")
        client = await join(srv, dev)
        pclient, pstream, _ = await poll(srv, peer)
        with_netinfo = {"Hostname": "laptop", "NetInfo": {"PreferredDERP": 999}}
        await client.map_lite(dev.map_body(stream=False, hostinfo=with_netinfo))
        msg = await pstream.wait_for(lambda m: "PeersChanged" in m)
        assert msg["PeersChanged"][0]["HomeDERP"] == 999
        # The client sends NetInfo only when it changed.
        await client.map_lite(
            dev.map_body(stream=False, hostinfo={"Hostname": "laptop", "OS": "x"})
        )
        msg = await pstream.wait_for(lambda m: "PeersChanged" in m)
        assert msg["PeersChanged"][0]["Hostinfo"]["OS"] == "x"
        assert msg["PeersChanged"][0]["HomeDERP"] == 999


@async_test
async def test_removed_node_reaches_peers_as_peers_removed(tmp_path: Path) -> None:
    async with running_server(tmp_path) as srv:
        dev, gone = Device("laptop"), Device("old-box")
        await (await join(srv, gone)).close()
        client, stream, first = await poll(srv, dev)
        gone_id = first["Peers"][0]["ID"]

        srv.registry.remove(gone_id)
        msg = await stream.wait_for(lambda m: "PeersRemoved" in m)
        assert msg["PeersRemoved"] == [gone_id]


@async_test
async def test_removed_node_s_own_stream_ends(tmp_path: Path) -> None:
    async with running_server(tmp_path) as srv:
        dev = Device("laptop")
        client, stream, msg = await poll(srv, dev)
        srv.registry.remove(msg["Node"]["ID"])
        await stream.body()
        assert stream.ended


@async_test
async def test_keepalives_arrive_while_nothing_changes(tmp_path: Path) -> None:
    async with running_server(tmp_path, keepalive=0.05) as srv:
        dev = Device("laptop")
        client, stream, _ = await poll(srv, dev)
        for _ in range(3):
            assert await stream.next(timeout=2, keepalives=True) == {"KeepAlive": True}
        # Byte-identical every time, so the client can skip decoding them.
        assert bytes(stream.raw).endswith(MapFrameEncoder().keepalive() * 3)


@async_test
async def test_an_idle_stream_s_keepalives_never_look_at_the_tailnet(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """5,000 idle streams send ~90 keep-alives a second: each is the frame
    alone, not a session step over the serving context (counted)."""
    steps = []
    step = MapSession.step

    def counted(self: MapSession, *args: Any, **kwargs: Any) -> bytes | None:
        steps.append(self.node_id)
        return step(self, *args, **kwargs)

    monkeypatch.setattr(MapSession, "step", counted)
    async with running_server(tmp_path, keepalive=0.02) as srv:
        client, stream, first = await poll(srv, Device("laptop"))
        stepped = len(steps)
        for _ in range(5):
            assert await stream.next(timeout=2, keepalives=True) == {"KeepAlive": True}
        assert len(steps) == stepped
        # A wake still reaches it (here a health probe's ping).
        srv.tailnet.ping(first["Node"]["ID"], "https://ctl.example/machine/probe/x")
        msg = await stream.next(timeout=2)
        assert "PingRequest" in msg


@async_test
async def test_non_streaming_map_without_omit_peers_sends_one_full_map(tmp_path: Path) -> None:
    async with running_server(tmp_path) as srv:
        dev, peer = Device("laptop"), Device("desktop")
        await (await join(srv, peer)).close()
        client = await join(srv, dev)
        body = dev.map_body(stream=False)
        del body["OmitPeers"]
        stream = await client.map_stream(body)
        msg = await stream.next()
        assert "Node" in msg and len(msg["Peers"]) == 1
        await stream.body()
        assert stream.ended
