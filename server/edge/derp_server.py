"""The embedded DERP relay: pumps bytes between sockets and `DerpConnection`s.

Routing follows tailscale `derp/derpserver/derpserver.go`: the last
connection for a key receives its packets; each receiver has small bounded
queues that drop their oldest packet when full, so a slow receiver never
blocks a sender; senders learn with PeerGone when a peer they talked to
left (reason 0x00) or, for disco packets and rate-limited, that it is not
here at all (0x01).

The hot path is one read -> one write per receiver: a read's packets are
routed into the receivers' queues and, once the read is handled, each
receiver whose socket is not backed up gets all of them in one write
(`_flush`); a backed-up one is left to its write loop, which waits for the
socket to drain while its queue drops the oldest. A sender remembers where
its last destination key went (`_Client.route`) until the set of connected
keys changes, so a steady flow skips the lookups.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from server.logs import event as log_event
from server.protocol.derp import (
    HANDSHAKE_TIMEOUT,
    PROTOCOL_VERSION,
    ClientHello,
    ClosePeer,
    DerpConnection,
    DerpError,
    Event,
    ForwardPacket,
    NotePreferred,
    PeerGoneReason,
    Ping,
    SendPacket,
    WatchConns,
    looks_like_disco,
)
from server.protocol.keys import NodePrivate, NodePublic
from server.wakeup import Wakeup

__all__ = ["DerpServer", "DerpStats", "DropReason", "Forwarder"]

# A mesh peer's way to reach a key connected there: (src, dst, packet) -> sent?
Forwarder = Callable[[NodePublic, NodePublic, bytes], bool]

QUEUE_DEPTH = 32  # packets per receiver and kind, as tailscale's default
WRITE_TIMEOUT = 2.0  # tailscale's DefaultTCPWriteTimeout
READ_SIZE = 64 << 10
MAX_PENDING_PEER_GONE = 256
# "Not here" answers: a burst of 3, then one a second (derpserver peerGoneLim).
PEER_GONE_RATE, PEER_GONE_BURST = 1.0, 3.0


class DropReason(StrEnum):
    UNKNOWN_DEST = "unknown_dest"  # nobody with that key is connected
    QUEUE_HEAD = "queue_head"  # receiver's queue was full; its oldest packet went
    GONE_DISCONNECTED = "gone_disconnected"  # receiver left with packets queued
    WRITE_ERROR = "write_error"  # the receiver's socket failed or stalled
    MESH_BACKLOG = "mesh_backlog"  # the mesh connection to the peer's server is backed up


@dataclass(frozen=True, slots=True)
class DerpStats:
    clients: int
    accepts: int
    refused: int
    packets_received: int
    bytes_received: int
    packets_sent: int
    bytes_sent: int
    pongs_sent: int
    peer_gone_sent: int
    drops: Mapping[DropReason, int]
    forwarded: int = 0  # packets handed to another server of the region
    forwarded_in: int = 0  # packets another server of the region handed to us


@dataclass(slots=True)
class _Counters:
    accepts: int = 0
    refused: int = 0
    packets_received: int = 0
    bytes_received: int = 0
    packets_sent: int = 0
    bytes_sent: int = 0
    pongs_sent: int = 0
    peer_gone_sent: int = 0
    forwarded: int = 0
    forwarded_in: int = 0
    drops: Counter[DropReason] = field(default_factory=Counter)


class _TokenBucket:
    def __init__(self, rate: float, burst: float, now: float) -> None:
        self._rate, self._burst = rate, burst
        self._tokens, self._at = burst, now

    def allow(self, now: float) -> bool:
        self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
        self._at = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


class _Client:
    """One connection and what waits to be written to it."""

    def __init__(self, conn: DerpConnection, writer: asyncio.StreamWriter, now: float) -> None:
        self.conn = conn
        self.writer = writer
        self.key: NodePublic | None = None
        self.registered = False
        self.mesh = False  # another server of the region, not a node
        self.presence: dict[NodePublic, bool] = {}  # for a mesh watcher: present or gone
        self.closing = False
        self.wake = Wakeup()
        self.done = asyncio.Event()
        # Disco gets its own queue so path discovery survives a flood of data.
        self.packets: deque[tuple[NodePublic, bytes]] = deque()
        self.disco: deque[tuple[NodePublic, bytes]] = deque()
        self.pong: bytes | None = None
        self.peer_gone: dict[NodePublic, PeerGoneReason] = {}
        self.senders: set[NodePublic] = set()  # keys that sent to us: PeerGone when they go
        self.not_here_limit = _TokenBucket(PEER_GONE_RATE, PEER_GONE_BURST, now)
        self.preferred = False
        self.peer = str(writer.get_extra_info("peername"))
        self.flushing = False  # in the server's list of receivers to write after this read
        # (destination key, server generation, its receiver): the last route taken.
        self.route: tuple[NodePublic, int, _Client] | None = None
        self.high_water = writer.transport.get_write_buffer_limits()[1]

    def name(self) -> str:
        return f"{self.peer} {self.key.short() if self.key else '(no key yet)'}"

    def shut(self) -> None:
        """Stop this connection; the reader sees EOF and `handle` cleans up."""
        self.closing = True
        self.wake.set()
        self.writer.close()


class DerpServer:
    def __init__(
        self,
        private_key: NodePrivate,
        *,
        is_allowed: Callable[[NodePublic], bool],
        keepalive_interval: float = 60.0,
        log: logging.Logger | None = None,
        queue_depth: int = QUEUE_DEPTH,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        clock: Callable[[], float] | None = None,
        rng: Callable[[int], bytes] = os.urandom,
        mesh_key: str | None = None,
    ) -> None:
        self._key = private_key
        self._mesh_key = mesh_key
        self._mesh_watchers: set[_Client] = set()
        self._forwarders: dict[NodePublic, tuple[object, Forwarder]] = {}
        self._public = private_key.public()
        self._is_allowed = is_allowed
        self._keepalive_interval = keepalive_interval
        self._log = log or logging.getLogger("tailnetd.derp")
        self._queue_depth = queue_depth
        self._handshake_timeout = handshake_timeout
        self._clock = clock
        self._rng = rng
        self._all: set[_Client] = set()
        self._by_key: dict[NodePublic, list[_Client]] = {}  # last one is active
        self._watchers: dict[NodePublic, set[_Client]] = {}  # got packets from key
        self._counters = _Counters()
        self._closed = False
        self._to_flush: list[_Client] = []  # receivers given packets by the current read
        self._generation = 0  # bumped when who is connected changes: routes are stale
        self._upgrade = (
            "HTTP/1.1 101 Switching Protocols\r\n"
            "Upgrade: DERP\r\n"
            "Connection: Upgrade\r\n"
            f"Derp-Version: {PROTOCOL_VERSION}\r\n"
            f"Derp-Public-Key: {self._public.raw.hex()}\r\n\r\n"
        ).encode()

    @property
    def public_key(self) -> NodePublic:
        return self._public

    def _now(self) -> float:
        return self._clock() if self._clock else asyncio.get_running_loop().time()

    def connected(self) -> set[NodePublic]:
        return set(self._by_key)

    def stats(self) -> DerpStats:
        c = self._counters
        return DerpStats(
            clients=len(self._all),
            accepts=c.accepts,
            refused=c.refused,
            packets_received=c.packets_received,
            bytes_received=c.bytes_received,
            packets_sent=c.packets_sent,
            bytes_sent=c.bytes_sent,
            pongs_sent=c.pongs_sent,
            peer_gone_sent=c.peer_gone_sent,
            drops=dict(c.drops),
            forwarded=c.forwarded,
            forwarded_in=c.forwarded_in,
        )

    def disconnect(self, key: NodePublic) -> None:
        """Drop every connection of a node (it was removed or its key expired)."""
        for client in list(self._by_key.get(key, ())):
            self._log.info("derp: %s: disconnected by the server", client.name())
            client.shut()

    async def close(self) -> None:
        self._closed = True
        clients = list(self._all)
        for client in clients:
            client.shut()
        for client in clients:
            await client.done.wait()

    async def handle(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        fast_start: bool = False,
    ) -> None:
        """Serve one connection whose `GET /derp` upgrade request was already read."""
        if self._closed:
            writer.close()
            return
        now = self._now()
        conn = DerpConnection(
            self._key,
            rng=self._rng,
            now=now,
            handshake_timeout=self._handshake_timeout,
            keepalive_interval=self._keepalive_interval,
            mesh_key=self._mesh_key,
        )
        client = _Client(conn, writer, now)
        self._all.add(client)
        if not fast_start:
            writer.write(self._upgrade)
        sender = asyncio.create_task(self._write_loop(client))
        client.wake.set()
        try:
            await self._read_loop(reader, client)
        except DerpError as exc:
            self._log.info("derp: %s: closing: %s", client.name(), exc)
        except (ConnectionError, OSError):
            pass
        finally:
            self._unregister(client)
            client.shut()
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()
            self._all.discard(client)
            client.done.set()

    async def _read_loop(self, reader: asyncio.StreamReader, client: _Client) -> None:
        conn = client.conn
        while not client.closing:
            data = await reader.read(READ_SIZE)
            if not data:
                return
            try:
                for event in conn.receive_data(data):
                    if client.closing or not conn.is_open:
                        return
                    if type(event) is SendPacket:
                        self._route(client, event.dst, event.packet)
                    else:
                        self._on_event(client, event)
            finally:
                self._flush()

    def _flush(self) -> None:
        """One write per receiver for what the last read routed to it, unless its
        socket is backed up: then its write loop drains first (and its queue drops)."""
        receivers, self._to_flush = self._to_flush, []
        for target in receivers:
            target.flushing = False
            if not self._write_now(target):
                target.wake.set()

    def _write_now(self, target: _Client) -> bool:
        """Write what waits for `target` unless its socket is backed up (or going)."""
        transport = target.writer.transport
        if (
            target.closing
            or not target.registered
            or not target.conn.is_open
            or transport.is_closing()
            or transport.get_write_buffer_size() > target.high_water
        ):
            return False
        self._fill(target)
        data = target.conn.data_to_send()
        if data:
            target.writer.write(data)
        return True

    def _on_event(self, client: _Client, event: Event) -> None:
        match event:
            case ClientHello(key=key):
                self._admit(client, key)
            case SendPacket(dst=dst, packet=packet):
                self._route(client, dst, packet)
            case Ping(data=data):
                # One pending pong, as tailscale: a client pinging faster than
                # we write gets the replies it can read.
                if client.pong is None:
                    client.pong = data
                    client.wake.set()
            case NotePreferred(preferred=preferred):
                client.preferred = preferred
            case WatchConns():
                self._mesh_watchers.add(client)
                client.presence.update(dict.fromkeys(self._by_key, True))
                client.wake.set()
            case ForwardPacket(src=src, dst=dst, packet=packet):
                self._counters.forwarded_in += 1
                self._deliver(src, dst, packet, None)
            case ClosePeer(peer=peer):
                self.disconnect(peer)

    def _admit(self, client: _Client, key: NodePublic) -> None:
        client.key = key
        if client.conn.can_mesh:
            # Another server of the region (it showed the mesh key): not a node.
            client.conn.accept(self._now())
            client.mesh = client.registered = True
            client.wake.set()
            self._log.info("derp: %s: mesh peer connected", client.name())
            return
        try:
            allowed = self._is_allowed(key)
        except Exception:
            self._log.exception("derp: %s: admission check failed; refusing", client.name())
            allowed = False
        if not allowed:
            self._counters.refused += 1
            self._log.info(
                "derp: %s: refused: not a node of this tailnet",
                client.name(),
                extra=log_event("derp.refused", node_key=key.short(), peer=client.peer),
            )
            client.conn.reject()
            client.shut()
            return
        client.conn.accept(self._now())
        self._counters.accepts += 1
        connections = self._by_key.setdefault(key, [])
        if connections:
            self._log.info("derp: %s: replaces an earlier connection", client.name())
        else:
            self._tell_mesh(key, True)
        connections.append(client)
        self._generation += 1
        client.registered = True
        client.wake.set()
        self._log.debug("derp: %s: connected", client.name())

    def _route(self, src: _Client, dst: NodePublic, packet: bytes) -> None:
        assert src.key is not None
        c = self._counters
        c.packets_received += 1
        c.bytes_received += len(packet)
        route = src.route
        if (
            route is not None
            and route[0] is dst
            and route[1] == self._generation
            and not looks_like_disco(packet)
        ):
            self._enqueue(route[2], route[2].packets, src.key, packet)
            return
        self._deliver(src.key, dst, packet, src)

    def _deliver(
        self, src_key: NodePublic, dst: NodePublic, packet: bytes, src: _Client | None
    ) -> None:
        """To `dst` connected here, else through the mesh peer that has it.
        `src` is None for a packet a mesh peer forwarded."""
        c = self._counters
        disco = looks_like_disco(packet)
        targets = self._by_key.get(dst)
        if not targets:
            forwarder = self._forwarders.get(dst) if src is not None else None
            if forwarder is not None:
                if forwarder[1](src_key, dst, packet):
                    c.forwarded += 1
                else:
                    c.drops[DropReason.MESH_BACKLOG] += 1
                return
            c.drops[DropReason.UNKNOWN_DEST] += 1
            if src is not None and disco and src.not_here_limit.allow(self._now()):
                self._queue_peer_gone(src, dst, PeerGoneReason.NOT_HERE)
            return
        target = targets[-1]
        if src_key not in target.senders:
            target.senders.add(src_key)
            self._watchers.setdefault(src_key, set()).add(target)
        if src is not None and not disco:
            src.route = (dst, self._generation, target)
        self._enqueue(target, target.disco if disco else target.packets, src_key, packet)

    def _enqueue(
        self,
        target: _Client,
        queue: deque[tuple[NodePublic, bytes]],
        src_key: NodePublic,
        packet: bytes,
    ) -> None:
        # A full queue is written out at once if the receiver keeps up; only
        # one whose socket is backed up loses its oldest packet.
        if len(queue) >= self._queue_depth and not self._write_now(target):
            queue.popleft()
            self._counters.drops[DropReason.QUEUE_HEAD] += 1
        queue.append((src_key, packet))
        if not target.flushing:
            target.flushing = True
            self._to_flush.append(target)

    # The mesh: other servers of the region

    def _tell_mesh(self, key: NodePublic, present: bool) -> None:
        for watcher in self._mesh_watchers:
            watcher.presence[key] = present
            watcher.wake.set()

    def add_forwarder(self, key: NodePublic, owner: object, forward: Forwarder) -> None:
        """`key` is connected to another server of the region; `owner` is our
        mesh connection to it. The latest one wins, as the client's last
        connection does."""
        self._forwarders[key] = (owner, forward)

    def remove_forwarder(self, key: NodePublic, owner: object) -> None:
        """`key` left that server: those it talked to here learn it is gone."""
        current = self._forwarders.get(key)
        if current is None or current[0] is not owner:
            return
        del self._forwarders[key]
        self._generation += 1
        if key not in self._by_key:
            for watcher in self._watchers.pop(key, ()):
                watcher.senders.discard(key)
                self._queue_peer_gone(watcher, key, PeerGoneReason.DISCONNECTED)

    def remove_forwarders(self, owner: object) -> None:
        """The mesh connection `owner` dropped: nothing is reachable through it."""
        for key in [k for k, (o, _) in self._forwarders.items() if o is owner]:
            self.remove_forwarder(key, owner)

    def _queue_peer_gone(self, client: _Client, peer: NodePublic, why: PeerGoneReason) -> None:
        if len(client.peer_gone) < MAX_PENDING_PEER_GONE or peer in client.peer_gone:
            client.peer_gone[peer] = why
            client.wake.set()

    def _unregister(self, client: _Client) -> None:
        self._generation += 1
        client.route = None
        dropped = len(client.packets) + len(client.disco)
        client.packets.clear()
        client.disco.clear()
        self._counters.drops[DropReason.GONE_DISCONNECTED] += dropped
        for sender in client.senders:
            watchers = self._watchers.get(sender)
            if watchers is not None:
                watchers.discard(client)
                if not watchers:
                    del self._watchers[sender]
        client.senders.clear()
        self._mesh_watchers.discard(client)
        if not client.registered or client.key is None or client.mesh:
            return
        client.registered = False
        key = client.key
        connections = self._by_key[key]
        connections.remove(client)
        if connections:
            return  # an older connection for the key is still up and takes over
        del self._by_key[key]
        self._tell_mesh(key, False)
        self._log.debug("derp: %s: gone", client.name())
        for watcher in self._watchers.pop(key, ()):
            watcher.senders.discard(key)
            self._queue_peer_gone(watcher, key, PeerGoneReason.DISCONNECTED)

    async def _write_loop(self, client: _Client) -> None:
        conn, writer = client.conn, client.writer
        try:
            while not client.closing:
                timer = conn.get_timer()
                timeout = None if timer is None else max(0.0, timer - self._now())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(client.wake.wait(), timeout)
                client.wake.clear()
                if client.closing or not conn.is_open:
                    return
                conn.handle_timer(self._now())
                if client.registered:
                    self._fill(client)
                data = conn.data_to_send()
                if data:
                    writer.write(data)
                    await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT)
        except DerpError as exc:
            self._log.info("derp: %s: closing: %s", client.name(), exc)
        except (TimeoutError, ConnectionError, OSError) as exc:
            self._counters.drops[DropReason.WRITE_ERROR] += 1
            self._log.info("derp: %s: write failed: %s", client.name(), exc or "timed out")
        finally:
            if not client.closing:
                client.shut()

    def _fill(self, client: _Client) -> None:
        """Move what waits for this client into its connection's output."""
        conn, c = client.conn, self._counters
        for peer, why in client.peer_gone.items():
            conn.send_peer_gone(peer, why)
        c.peer_gone_sent += len(client.peer_gone)
        client.peer_gone.clear()
        for peer, present in client.presence.items():
            if present:
                conn.send_peer_present(peer)
            else:
                conn.send_peer_gone(peer, PeerGoneReason.DISCONNECTED)
        client.presence.clear()
        for queue in (client.disco, client.packets):
            if queue:
                c.packets_sent += conn.send_packets(queue)
                c.bytes_sent += sum(len(packet) for _, packet in queue)
                queue.clear()
        # Last, so a ping works as a barrier: what it followed was written first.
        if client.pong is not None:
            conn.send_pong(client.pong)
            client.pong = None
            c.pongs_sent += 1
