"""The DERP relay over real loopback TCP, with clients speaking the wire protocol."""

from __future__ import annotations

import asyncio
import os
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from server.edge.derp_server import DerpServer, DropReason
from server.protocol import derp
from server.protocol.derp import ClientInfo, Frame, FrameDecoder, FrameType, PeerGoneReason
from server.protocol.keys import NodePrivate, NodePublic

UPGRADE_REQUEST = (
    b"GET /derp HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: Go-http-client/1.1\r\n"
    b"Connection: Upgrade\r\nUpgrade: DERP\r\n"
)
DISCO = derp.DISCO_MAGIC + bytes(32 + 24) + b"box"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Client:
    """A DERP client as tailscale's derp_client.go behaves."""

    def __init__(self, port: int, key: NodePrivate | None = None) -> None:
        self.port = port
        self.key = key or NodePrivate.generate()
        self.decoder = FrameDecoder()
        self.pending: deque[Frame] = deque()
        self.response_head = b""

    @property
    def public(self) -> NodePublic:
        return self.key.public()

    async def connect(self, *, fast_start: bool = False, send_info: bool = True) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        extra = b"Derp-Fast-Start: 1\r\n" if fast_start else b""
        self.writer.write(UPGRADE_REQUEST + extra + b"\r\n")
        if not fast_start:
            self.response_head = await self.reader.readuntil(b"\r\n\r\n")
        greeting = await self.frame()
        assert greeting.type == FrameType.SERVER_KEY
        self.server_key = derp.parse_server_key(greeting.payload)
        if send_info:
            info = ClientInfo(version=2, can_ack_pings=True)
            self.send(derp.client_info_frame(self.key, self.server_key, info, os.urandom(24)))

    async def handshake(self) -> None:
        await self.connect()
        frame = await self.frame()
        assert frame.type == FrameType.SERVER_INFO
        assert derp.parse_server_info(self.key, self.server_key, frame.payload).version == 2
        self.send(derp.note_preferred_frame(True))

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def frame(self, timeout: float = 5.0) -> Frame:
        while not self.pending:
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
            if not data:
                raise EOFError("server closed the connection")
            self.pending.extend(self.decoder.receive_data(data))
        return self.pending.popleft()

    async def next_not_keepalive(self) -> Frame:
        while (frame := await self.frame()).type == FrameType.KEEP_ALIVE:
            pass
        return frame

    async def roundtrip(self, data: bytes = b"synced!!") -> list[Frame]:
        """Everything the server sent before answering a ping."""
        self.send(derp.ping_frame(data))
        frames = []
        while (frame := await self.frame()) != Frame(FrameType.PONG, data):
            frames.append(frame)
        return frames

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, OSError):
            pass


async def front_door(server: DerpServer) -> tuple[asyncio.Server, int]:
    """The part of the real front door that matters here: read the head, hand over."""

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"GET /derp HTTP/1.1\r\n") and b"Upgrade: DERP" in head
        await server.handle(reader, writer, fast_start=b"Derp-Fast-Start: 1" in head)

    listener = await asyncio.start_server(on_connection, "127.0.0.1", 0)
    return listener, listener.sockets[0].getsockname()[1]


Scenario = Callable[[DerpServer, int], Awaitable[None]]


def run(scenario: Scenario, **options: Any) -> DerpServer:
    server_options: dict[str, Any] = {"is_allowed": lambda key: True, **options}

    async def main() -> DerpServer:
        server = DerpServer(NodePrivate.generate(), **server_options)
        listener, port = await front_door(server)
        try:
            await asyncio.wait_for(scenario(server, port), 20)
        finally:
            await server.close()
            listener.close()
            await listener.wait_closed()
        assert server.stats().clients == 0
        return server

    return asyncio.run(main())


def test_a_packet_from_a_reaches_b_tagged_with_a_key() -> None:
    async def scenario(server: DerpServer, port: int) -> None:
        a, b = Client(port), Client(port)
        await a.handshake()
        await b.handshake()
        assert server.connected() == {a.public, b.public}
        head = a.response_head.decode()
        assert head.startswith("HTTP/1.1 101 Switching Protocols\r\n")
        assert "Upgrade: DERP\r\n" in head and "Derp-Version: 2\r\n" in head
        assert f"Derp-Public-Key: {server.public_key.raw.hex()}\r\n" in head
        assert a.server_key == server.public_key

        a.send(derp.send_packet_frame(b.public, b"wireguard bytes"))
        frame = await b.next_not_keepalive()
        assert frame.type == FrameType.RECV_PACKET
        assert derp.split_key(frame.payload) == (a.public, b"wireguard bytes")
        await a.close()
        await b.close()

    server = run(scenario)
    stats = server.stats()
    assert (stats.accepts, stats.packets_received, stats.packets_sent) == (2, 1, 1)


def test_ping_is_answered_with_the_same_bytes() -> None:
    async def scenario(server: DerpServer, port: int) -> None:
        a = Client(port)
        await a.handshake()
        assert await a.roundtrip(b"\x01\x02\x03\x04\x05\x06\x07\x08") == []
        await a.close()

    assert run(scenario).stats().pongs_sent == 1


def test_a_key_that_is_not_allowed_is_refused() -> None:
    banned = NodePrivate.generate()

    async def scenario(server: DerpServer, port: int) -> None:
        intruder = Client(port, banned)
        await intruder.connect()
        with pytest.raises((EOFError, ConnectionError)):
            await intruder.frame()
        assert server.connected() == set()
        await intruder.close()

    server = run(scenario, is_allowed=lambda key: key != banned.public())
    assert server.stats().refused == 1 and server.stats().accepts == 0


def test_peers_learn_when_a_sender_disconnects() -> None:
    async def scenario(server: DerpServer, port: int) -> None:
        a, b, c = Client(port), Client(port), Client(port)
        for client in (a, b, c):
            await client.handshake()
        a.send(derp.send_packet_frame(b.public, b"hello"))
        assert (await b.next_not_keepalive()).type == FrameType.RECV_PACKET
        await a.close()
        frame = await b.next_not_keepalive()
        assert frame.type == FrameType.PEER_GONE
        assert derp.parse_peer_gone(frame.payload) == (a.public, PeerGoneReason.DISCONNECTED)
        assert await c.roundtrip() == []  # c never heard from a
        assert server.connected() == {b.public, c.public}
        await b.close()
        await c.close()

    run(scenario)


def test_disco_to_an_absent_peer_gets_a_rate_limited_not_here() -> None:
    absent = NodePrivate.generate().public()

    async def scenario(server: DerpServer, port: int) -> None:
        a = Client(port)
        await a.handshake()
        a.send(derp.send_packet_frame(absent, b"not disco"))
        assert await a.roundtrip(b"first!!!") == []
        for _ in range(5):
            a.send(derp.send_packet_frame(absent, DISCO))
        frames = await a.roundtrip()
        assert frames and all(f.type == FrameType.PEER_GONE for f in frames)
        assert derp.parse_peer_gone(frames[0].payload) == (absent, PeerGoneReason.NOT_HERE)
        await a.close()

    server = run(scenario, clock=FakeClock())
    # Five disco packets within one instant: the burst of three answers, dedupe may merge.
    assert 1 <= server.stats().peer_gone_sent <= 3
    assert server.stats().drops[DropReason.UNKNOWN_DEST] == 6


def test_the_last_connection_for_a_key_gets_the_packets() -> None:
    async def scenario(server: DerpServer, port: int) -> None:
        key = NodePrivate.generate()
        old, new, sender = Client(port, key), Client(port, key), Client(port)
        for client in (old, new, sender):
            await client.handshake()
        sender.send(derp.send_packet_frame(key.public(), b"to the newest"))
        assert derp.split_key((await new.next_not_keepalive()).payload)[1] == b"to the newest"
        assert await old.roundtrip() == []
        await new.close()
        assert await sender.roundtrip() == []  # the key is still here: no PeerGone
        sender.send(derp.send_packet_frame(key.public(), b"back to the old one"))
        frame = await old.next_not_keepalive()
        assert derp.split_key(frame.payload)[1] == b"back to the old one"
        await old.close()
        await sender.close()

    run(scenario)


def test_a_steady_flow_follows_the_receiver_when_it_reconnects() -> None:
    async def scenario(server: DerpServer, port: int) -> None:
        key = NodePrivate.generate()
        first, sender = Client(port, key), Client(port)
        await first.handshake()
        await sender.handshake()
        for i in range(3):
            sender.send(derp.send_packet_frame(key.public(), b"first %d" % i))
        got = [derp.split_key(f.payload)[1] for f in await first.roundtrip()]
        assert got == [b"first 0", b"first 1", b"first 2"]
        second = Client(port, key)
        await second.handshake()
        sender.send(derp.send_packet_frame(key.public(), b"to the second"))
        assert derp.split_key((await second.next_not_keepalive()).payload)[1] == b"to the second"
        for client in (first, second, sender):
            await client.close()

    run(scenario)


def test_disconnect_drops_a_removed_node() -> None:
    async def scenario(server: DerpServer, port: int) -> None:
        a = Client(port)
        await a.handshake()
        await a.roundtrip()
        server.disconnect(a.public)
        with pytest.raises((EOFError, ConnectionError)):
            while True:
                await a.frame()
        await asyncio.sleep(0)
        assert a.public not in server.connected()
        await a.close()

    run(scenario)


def test_a_read_larger_than_the_queue_loses_nothing_when_the_receiver_keeps_up() -> None:
    async def scenario(server: DerpServer, port: int) -> None:
        a, b = Client(port), Client(port)
        await a.handshake()
        await b.handshake()
        burst = b"".join(derp.send_packet_frame(b.public, b"%03d" % i) for i in range(50))
        a.send(burst)  # one TCP write: the server routes it all from one read
        assert await a.roundtrip() == []
        received = [derp.split_key(f.payload)[1] for f in await b.roundtrip()]
        assert received == [b"%03d" % i for i in range(50)]
        await a.close()
        await b.close()

    server = run(scenario, queue_depth=4)
    assert server.stats().drops.get(DropReason.QUEUE_HEAD, 0) == 0


def test_a_slow_receiver_loses_its_oldest_packets_not_the_sender_its_connection() -> None:
    packet = bytes(derp.MAX_PACKET_SIZE - 8)
    count = 320  # 20 MiB: more than the sockets between the relay and b hold

    async def scenario(server: DerpServer, port: int) -> None:
        a, b = Client(port), Client(port)
        await a.handshake()
        await b.handshake()
        for i in range(count):  # b reads nothing meanwhile
            a.send(derp.send_packet_frame(b.public, packet + b"%08d" % i))
            await a.writer.drain()
        assert await a.roundtrip() == []  # the sender was never held up or cut off
        received = [derp.split_key(f.payload)[1] for f in await b.roundtrip()]
        assert received[-1].endswith(b"%08d" % (count - 1))  # the freshest packets survive
        assert len(received) < count
        await a.close()
        await b.close()

    server = run(scenario, queue_depth=4)
    assert server.stats().drops[DropReason.QUEUE_HEAD] == count - server.stats().packets_sent


def test_keepalives_flow_while_idle() -> None:
    async def scenario(server: DerpServer, port: int) -> None:
        a = Client(port)
        await a.handshake()
        assert (await a.frame()).type == FrameType.KEEP_ALIVE
        assert (await a.frame()).type == FrameType.KEEP_ALIVE
        await a.close()

    run(scenario, keepalive_interval=0.05)


def test_a_client_that_never_sends_its_key_is_cut_off() -> None:
    async def scenario(server: DerpServer, port: int) -> None:
        slow = Client(port)
        await slow.connect(send_info=False)
        with pytest.raises((EOFError, ConnectionError)):
            await slow.frame()
        await slow.close()

    run(scenario, handshake_timeout=0.1)


def test_fast_start_skips_the_http_response() -> None:
    async def scenario(server: DerpServer, port: int) -> None:
        a = Client(port)
        await a.connect(fast_start=True)  # asserts the first bytes are ServerKey
        assert (await a.frame()).type == FrameType.SERVER_INFO
        await a.close()

    run(scenario)


def test_garbage_after_the_upgrade_closes_only_that_connection() -> None:
    async def scenario(server: DerpServer, port: int) -> None:
        good, bad = Client(port), Client(port)
        await good.handshake()
        await bad.connect(send_info=False)
        bad.send(b"\x04\xff\xff\xff\xff")  # a 4 GiB frame before the handshake
        with pytest.raises((EOFError, ConnectionError)):
            await bad.frame()
        assert await good.roundtrip() == []
        await good.close()
        await bad.close()

    run(scenario)
