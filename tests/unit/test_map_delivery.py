"""Deltas sent to idle map streams without resuming their tasks
(server/tailnet/handle.py `Deliveries`, `MapStreams._deliver` (server/map_streams.py)): the
client gets the very bytes the task would have sent, a stream whose
flow-control window is full is not written past it, and what needs the task
(a commit's new filter, a ping, the stream's end) still reaches the client."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from bench.loadgen.client import MapStream
from gitctl.policy import parse_policy
from gitctl.tailnet import TailnetSettings
from server.control import ControlHandler
from server.edge.control_conn import ControlConnection
from server.tailnet import SessionHandle
from server.tailnet.keepalives import KeepAlives
from server.tailnet.session import MapSession
from server.tailnet.wave import VolatileWave
from tests.unit.control_client import (
    ControlClient,
    Device,
    async_test,
    join,
    poll,
    running_server,
)


async def _quiet(*streams: MapStream) -> None:
    """Read every stream until nothing has come for a while."""
    for stream in streams:
        with contextlib.suppress(TimeoutError):
            while True:
                await stream.next(timeout=0.3, keepalives=True)


def _moved(endpoints: list[str]) -> Callable[[dict[str, Any]], bool]:
    return lambda m: any(p.get("Endpoints") == endpoints for p in m.get("PeersChanged", ()))


@async_test
async def test_an_idle_stream_gets_the_bytes_its_task_would_have_sent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_server(tmp_path) as srv:
        direct, tasked, mover = Device("direct"), Device("tasked"), Device("mover")
        _, dstream, _ = await poll(srv, direct)
        _, tstream, _ = await poll(srv, tasked)
        mclient, mstream, _ = await poll(srv, mover)
        await _quiet(dstream, tstream, mstream)  # everyone joined and online
        tasked_id = srv.store.node_by_node_key(tasked.node.public()).id  # type: ignore[union-attr]
        deliver, shared_peer = ControlHandler._deliver, MapSession.shared_peer

        def only_direct(self: ControlHandler, handle: SessionHandle, *args: Any) -> bool:
            # The other stream goes the old way: woken, its task steps and yields.
            return handle.node_id != tasked_id and deliver(self, handle, *args)

        def not_tasked(self: MapSession, *args: Any) -> Any:
            return None if self.node_id == tasked_id else shared_peer(self, *args)

        monkeypatch.setattr(ControlHandler, "_deliver", only_direct)
        monkeypatch.setattr(MapSession, "shared_peer", not_tasked)
        wave = srv.tailnet.deliveries.bulk
        assert isinstance(wave, VolatileWave)
        in_bulk = wave.delivered
        before = srv.tailnet.deliveries.delivered
        marks = len(dstream.raw), len(tstream.raw)
        endpoints = ["192.0.2.9:41641", "[2001:db8::9]:41641"]
        status, _ = await mclient.map_lite(mover.map_body(stream=False, endpoints=endpoints))
        assert status == 200
        await dstream.wait_for(_moved(endpoints))
        await tstream.wait_for(_moved(endpoints))
        assert srv.tailnet.deliveries.delivered > before  # `direct` went without its task
        assert wave.delivered > in_bulk  # and without a step (wave.py)
        # One shared delta: the same frame, byte for byte, down both streams.
        sent_direct = bytes(dstream.raw[marks[0] :])
        assert sent_direct == bytes(tstream.raw[marks[1] :])
        assert sent_direct


@async_test
async def test_a_stream_with_a_full_window_is_not_written_past_it(tmp_path: Path) -> None:
    async with running_server(tmp_path) as srv:
        mover = Device("mover")
        mclient = await join(srv, mover)
        slow = Device("slow")
        window = 1024
        client, stream, _ = await poll(srv, slow, window=window)
        await _quiet(stream)
        # The client stops reading: it grants the server no more window (an
        # established map stream's body is read by the client's tap, not h2).
        withheld: list[tuple[int, int]] = []
        tap = client._tap
        assert tap.following(stream.stream_id)
        acknowledge = tap.acknowledge
        tap.acknowledge = lambda sid, n: withheld.append((sid, n))  # type: ignore[method-assign]
        start = len(stream.raw)
        last: list[str] = []
        for n in range(12):
            last = [f"192.0.2.{n + 1}:41641", f"[2001:db8::{n + 1:x}]:41641"]
            body = mover.map_body(stream=False, endpoints=last)
            status, _ = await mclient.map_lite(body)
            assert status == 200
            await asyncio.sleep(0.05)
        await _quiet(stream)
        # Never more than the window it had (the client's h2 would have failed
        # the connection on a flow-control error first).
        assert len(stream.raw) - start <= window
        assert not stream.ended
        # Reading again: what it missed arrives, its last endpoints included.
        tap.acknowledge = acknowledge  # type: ignore[method-assign]
        for sid, n in withheld:
            acknowledge(sid, n)
        client._flush()
        await stream.wait_for(_moved(last), timeout=5)


@async_test
async def test_an_idle_stream_still_gets_a_commit_s_filter_and_a_ping(tmp_path: Path) -> None:
    async with running_server(tmp_path) as srv:
        watcher, peer = Device("watcher"), Device("peer")
        _, stream, _ = await poll(srv, watcher)
        await poll(srv, peer)
        await _quiet(stream)
        before = srv.tailnet.deliveries.delivered
        rule = {"action": "accept", "src": ["*"], "dst": ["*:47113"]}
        policy = {"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}, rule]}
        source = replace(srv.tailnet.source, id="rule", policy=parse_policy(policy))
        srv.tailnet.swap_source(source)
        msg = await stream.wait_for(lambda m: "PacketFilter" in m)
        assert "47113" in str(msg["PacketFilter"])
        assert "Peers" not in msg  # a delta, not a whole map again
        assert srv.tailnet.deliveries.delivered > before

        me = srv.store.node_by_node_key(watcher.node.public()).id  # type: ignore[union-attr]
        srv.tailnet.ping(me, "https://example.invalid/ping/1")  # its task sends pings
        msg = await stream.wait_for(lambda m: "PingRequest" in m)
        assert msg["PingRequest"]["URL"] == "https://example.invalid/ping/1"


@async_test
async def test_a_deleted_node_s_idle_stream_ends(tmp_path: Path) -> None:
    async with running_server(tmp_path) as srv:
        dev = Device("laptop")
        client: ControlClient
        client, stream, _ = await poll(srv, dev)
        await asyncio.sleep(0.1)
        node = srv.store.node_by_node_key(dev.node.public())
        assert node is not None
        srv.registry.remove(node.id)
        with pytest.raises(EOFError):
            while True:
                await stream.next(timeout=5)


@async_test
async def test_a_served_commit_reads_no_node_from_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Undeclared tags and route webhooks look at the registry's memory: in a
    mesh, each read of every node cost more than the commit's wave, and at
    5,000 nodes the one read left (~90 ms) ran before the fan-out."""
    async with running_server(tmp_path) as srv:
        for name in ("a", "b"):
            await join(srv, Device(name))
        reads = 0
        list_nodes = srv.store.list_nodes

        def counted() -> Any:
            nonlocal reads
            reads += 1
            return list_nodes()

        monkeypatch.setattr(srv.store, "list_nodes", counted)
        snap = srv.commits._current
        assert snap is not None
        srv.serving.serve(snap)
        assert reads == 0


@async_test
async def test_control_settings_are_made_once_per_served_settings(tmp_path: Path) -> None:
    """Every delivered delta asks for them (its next keep-alive): made once
    per settings.yaml served, and made again when a commit serves another."""
    async with running_server(tmp_path) as srv:
        first = srv._control_settings()
        assert srv._control_settings() is first
        settings = TailnetSettings(device_approval="required")
        srv.tailnet.swap_source(replace(srv.tailnet.source, id="s", settings=settings))
        again = srv._control_settings()
        assert again is not first and again.device_approval
        assert srv._control_settings() is again


@async_test
async def test_a_delivered_delta_leaves_the_keepalive_due_when_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wave reaches every idle stream: none of them is moved in the
    keep-alive wheel for it (the keep-alive may come early, never late)."""
    async with running_server(tmp_path) as srv:
        viewer, mover = Device("viewer"), Device("mover")
        _, vstream, _ = await poll(srv, viewer)
        mclient, mstream, _ = await poll(srv, mover)
        await _quiet(vstream, mstream)
        scheduled: list[SessionHandle] = []
        schedule = KeepAlives.schedule

        def counted(self: KeepAlives, handle: SessionHandle, *args: Any) -> None:
            scheduled.append(handle)
            schedule(self, handle, *args)

        monkeypatch.setattr(KeepAlives, "schedule", counted)
        before = srv.tailnet.deliveries.delivered
        endpoints = ["192.0.2.7:41641", "[2001:db8::7]:41641"]
        status, _ = await mclient.map_lite(mover.map_body(stream=False, endpoints=endpoints))
        assert status == 200
        await vstream.wait_for(_moved(endpoints))
        assert srv.tailnet.deliveries.delivered > before  # it went without its task
        viewer_id = srv.store.node_by_node_key(viewer.node.public()).id  # type: ignore[union-attr]
        assert all(h.node_id != viewer_id for h in scheduled)


@async_test
async def test_a_delivered_delta_is_sealed_and_written_in_the_delivery(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not a loop callback per connection later: the viewer's connection has
    nothing else pending, so the frame leaves in the delivery's own call.
    The mover's own message (its self node) is queued behind its lite
    request's answer and leaves with it (test_lite_answer.py)."""
    sealed: list[int] = []
    send_now = ControlConnection._send_now

    def counted(self: ControlConnection, *args: Any) -> bool:
        records = self._noise._send_counter
        done = send_now(self, *args)
        sealed.append(self._noise._send_counter - records if done else -1)
        return done

    # Before the streams open: each binds its connection's `_send_now` then.
    monkeypatch.setattr(ControlConnection, "_send_now", counted)
    async with running_server(tmp_path) as srv:
        viewer, mover = Device("viewer"), Device("mover")
        _, vstream, _ = await poll(srv, viewer)
        mclient, mstream, _ = await poll(srv, mover)
        await _quiet(vstream, mstream)
        sealed.clear()
        endpoints = ["192.0.2.8:41641", "[2001:db8::8]:41641"]
        status, _ = await mclient.map_lite(mover.map_body(stream=False, endpoints=endpoints))
        assert status == 200
        await vstream.wait_for(_moved(endpoints))
        assert sorted(sealed) == [0, 1]
