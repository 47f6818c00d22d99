"""Many simulated tailscale clients in one asyncio loop.

Each `SimNode` has its own machine and node keys, its own Noise + HTTP/2
connection, and one streaming map poll whose messages are applied to the
node's `ClientNetmap` as tailscaled would, in the connection's read loop as
they arrive (`MapStream.listen`). A measurement registers a
predicate on the nodes that must see a change, takes the time, acts, and
collects, per node, when its own netmap first satisfied the predicate.

Time comes from the `clock` passed in (the loop's monotonic clock by default).
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import json
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from bench.loadgen.client import (
    ControlClient,
    Device,
    MapStream,
    ServerAddress,
    fetch_server_key,
)
from bench.loadgen.decode import SharedDecodes, decoder_keeping
from bench.loadgen.netmap import ClientNetmap
from server.protocol.keys import MachinePublic

__all__ = [
    "KEEP_PEER_FIELDS",
    "LOADER_GC_THRESHOLDS",
    "PHASES",
    "At",
    "Fleet",
    "Predicate",
    "SimNode",
    "Watch",
    "has_peer_key",
    "holds_peers",
    "peer_endpoints",
    "top_mentions",
    "tune_gc",
]

# What a simulated client keeps of each peer: enough to check what the
# benchmarks change (membership, keys, endpoints, liveness), small enough for
# thousands of netmaps of thousands of peers in one process.
KEEP_PEER_FIELDS = frozenset(
    {"ID", "Key", "DiscoKey", "Name", "Addresses", "Endpoints", "HomeDERP", "Online", "User"}
)
Predicate = Callable[[ClientNetmap], bool]
# A load generator's heap is its netmaps: a million small acyclic peer dicts
# in a 1,000-node mesh. With the default thresholds (700, 10, 10) the cyclic
# collector scanned them over and over: 1.3-1.4 s of 3.3 s of loader CPU
# registering 600 nodes (gc.callbacks, two runs); with these, 0.2-0.3 s.
LOADER_GC_THRESHOLDS = (100_000, 50, 1000)
# The steps of a registration, in order: TCP and the Noise handshake,
# /machine/register, the map poll until its response headers, and from
# those until the first map is applied.
PHASES = ("connect", "register", "map_headers", "first_map")


@dataclass(frozen=True, slots=True)
class At:
    """What an action returns to say when it really happened (clock time)."""

    time: float


@dataclass(eq=False)
class SimNode:
    """One simulated client: keys, connection, map poll, and what it holds."""

    index: int
    device: Device
    netmap: ClientNetmap
    client: ControlClient | None = None
    stream: MapStream | None = None
    streaming: asyncio.Event = field(default_factory=asyncio.Event)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    error: str | None = None
    retries: int = 0
    auth_key: str | None = None  # registers with this key, not the fleet's (another user)
    _waiters: list[tuple[Predicate, asyncio.Future[float]]] = field(default_factory=list)

    @property
    def node_key(self) -> str:
        return self.device.node_key_text()

    @property
    def node_id(self) -> int | None:
        node = self.netmap.node
        return int(node["ID"]) if node else None

    def watch(self, predicate: Predicate, now: float) -> asyncio.Future[float]:
        """A future that resolves to the time the netmap first satisfies `predicate`."""
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        if self.streaming.is_set() and predicate(self.netmap):
            future.set_result(now)
        else:
            self._waiters.append((predicate, future))
        return future

    def _settle(self, now: float) -> None:
        pending = []
        for predicate, future in self._waiters:
            if future.done():
                continue
            if predicate(self.netmap):
                future.set_result(now)
            else:
                pending.append((predicate, future))
        self._waiters = pending


class Fleet:
    """Simulated nodes registered with one pre-auth key on one control server."""

    def __init__(
        self,
        server: ServerAddress,
        auth_key: str,
        *,
        hostname_prefix: str = "sim",
        keep: frozenset[str] | None = KEEP_PEER_FIELDS,
        clock: Callable[[], float] | None = None,
        concurrency: int = 8,
        first_map_timeout: float = 120.0,
    ) -> None:
        self.first_map_timeout = first_map_timeout
        self.server = server
        self.auth_key = auth_key
        self.prefix = hostname_prefix
        self.keep = keep
        self.clock = clock or asyncio.get_running_loop().time
        self.nodes: list[SimNode] = []
        # One decode of each message for every client it reaches (decode.py).
        self._decodes = SharedDecodes(decoder_keeping(keep))
        self._limit = asyncio.Semaphore(concurrency)
        self._server_key: MachinePublic | None = None
        # Per registration, seconds spent in each step of `_bring_up` (PHASES):
        # where a registration's latency goes, as the client sees it.
        self.phases: list[tuple[float, ...]] = []

    async def server_key(self) -> MachinePublic:
        if self._server_key is None:
            self._server_key = await fetch_server_key(self.server)
        return self._server_key

    def new_node(self, auth_key: str | None = None) -> SimNode:
        index = len(self.nodes)
        node = SimNode(index, Device(f"{self.prefix}{index}"), ClientNetmap(keep=self.keep))
        node.auth_key = auth_key
        self.nodes.append(node)
        return node

    # Bringing nodes up

    async def add(self, count: int, keys: list[str] | None = None) -> list[float]:
        """Register `count` new nodes (the n-th with `keys[n]`, by default the
        fleet's key) and open their polls; per-node seconds to first map."""
        nodes = [self.new_node(keys[n] if keys else None) for n in range(count)]
        return list(await asyncio.gather(*(self._limited(self.bring_up(n)) for n in nodes)))

    async def _limited(
        self, work: Awaitable[float], limit: asyncio.Semaphore | None = None
    ) -> float:
        async with limit or self._limit:
            return await work

    async def bring_up(self, node: SimNode, *, register: bool = True) -> float:
        """Connect, register (unless `register` is false: a reconnect), stream; seconds taken.

        Raises ConnectionError if the first map does not arrive within `first_map_timeout`.
        """
        start = self.clock()
        try:
            async with asyncio.timeout(self.first_map_timeout):
                await self._bring_up(node, register)
        except TimeoutError:
            raise ConnectionError(f"{node.device.hostname}: no first map in time") from None
        return self.clock() - start

    async def _bring_up(self, node: SimNode, register: bool) -> None:
        marks = [self.clock()]
        node.client = await ControlClient.connect(
            self.server, node.device.machine, server_key=await self.server_key()
        )
        marks.append(self.clock())
        if register:
            body = node.device.register_body(node.auth_key or self.auth_key)
            status, reply = await node.client.register(body)
            if status != 200 or not isinstance(reply, dict) or reply.get("Error"):
                raise ConnectionError(f"{node.device.hostname}: register failed: {status} {reply}")
        node.streaming.clear()
        node.ended.clear()
        node.netmap = ClientNetmap(keep=self.keep)  # a new poll is a new session
        marks.append(self.clock())
        node.stream = await node.client.map_stream(node.device.map_body(), keep_raw=False)
        marks.append(self.clock())
        if node.stream.status != 200:
            raise ConnectionError(f"{node.device.hostname}: map poll got {node.stream.status}")
        # The stream resolves `first` at the poll's first message or its end:
        # one future, not a task around each of the two events.
        first: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._follow(node, node.stream, first)
        await first
        if not node.streaming.is_set():
            raise ConnectionError(f"{node.device.hostname}: map poll ended: {node.error}")
        if register:
            marks.append(self.clock())
            self.phases.append(tuple(b - a for a, b in itertools.pairwise(marks)))

    def _follow(
        self, node: SimNode, stream: MapStream, first: asyncio.Future[None] | None = None
    ) -> None:
        netmap = node.netmap
        decodes = self._decodes

        def applied(framed: bytes) -> None:
            if netmap.apply_shared(decodes(framed)):
                node.streaming.set()
                _resolve(first)
                node._settle(self.clock())

        def ended(why: str) -> None:
            node.error = why
            node.ended.set()
            _resolve(first)

        stream.listen(applied, ended)

    async def reconnect(
        self, nodes: Iterable[SimNode], *, attempts: int = 5, concurrency: int | None = None
    ) -> list[float]:
        """New connections and polls for `nodes` (after a server restart), `concurrency`
        (by default the fleet's) at a time; a failed attempt is retried after a pause,
        as tailscaled backs off and retries.
        Per node, seconds from the first attempt until its first map."""
        self._server_key = None
        limit = asyncio.Semaphore(concurrency) if concurrency else None
        nodes = list(nodes)
        await asyncio.gather(*(self._drop(node) for node in nodes))  # the server is gone

        async def again(node: SimNode) -> float:
            start = self.clock()
            for attempt in range(attempts):
                try:
                    await self._limited(self.bring_up(node, register=False), limit)
                    return self.clock() - start
                except (ConnectionError, OSError):
                    await self._drop(node)
                    node.retries += 1
                    await asyncio.sleep(0.5 * (attempt + 1))
            raise ConnectionError(f"{node.device.hostname}: no map after {attempts} attempts")

        return list(await asyncio.gather(*(again(n) for n in nodes)))

    # Actions a measurement times

    async def set_endpoints(self, node: SimNode, endpoints: list[str]) -> None:
        """A lite map request with new endpoints, as tailscaled sends when they change."""
        assert node.client is not None
        body = node.device.map_body(stream=False, endpoints=endpoints)
        status, _ = await node.client.map_lite(body)
        if status != 200:
            raise ConnectionError(f"{node.device.hostname}: lite map got {status}")

    async def observe(
        self,
        observers: Iterable[SimNode],
        predicate: Callable[[SimNode], Predicate],
        action: Callable[[], Awaitable[Any]],
        *,
        timeout: float,
    ) -> list[float]:
        """Seconds from the start of `action` until each observer's netmap satisfies
        `predicate(observer)`; raises TimeoutError naming how many never did.

        An action that returns `At` says when it really happened (a git commit
        times from the commit existing, not from gitpython starting to write it).
        """
        futures = [node.watch(predicate(node), self.clock()) for node in observers]
        start = self.clock()
        happened = await action()
        if isinstance(happened, At):
            start = happened.time
        done, pending = await asyncio.wait(futures, timeout=timeout)
        for future in pending:
            future.cancel()
        if pending:
            raise TimeoutError(f"{len(pending)} of {len(futures)} clients never saw the change")
        return [max(0.0, future.result() - start) for future in futures]

    # Ending

    async def _drop(self, node: SimNode) -> None:
        if node.client is not None:
            await node.client.close()
            node.client = None

    async def close(self) -> None:
        for node in self.nodes:
            await self._drop(node)


def _resolve(future: asyncio.Future[None] | None) -> None:
    if future is not None and not future.done():
        future.set_result(None)


def holds_peers(count: int) -> Predicate:
    """At least `count` peers (registrations that raced a first map reached it)."""
    return lambda netmap: len(netmap.peers) >= count


def has_peer_key(key: str) -> Predicate:
    return lambda netmap: netmap.peer_with_key(key) is not None


def peer_endpoints(node_id: int, endpoints: list[str]) -> Predicate:
    return lambda netmap: (netmap.peers.get(node_id) or {}).get("Endpoints") == endpoints


def top_mentions(key: str, marker: str) -> Predicate:
    """The top-level `key` (e.g. PacketFilter) contains `marker` in its JSON."""
    return lambda netmap: marker in json.dumps(netmap.top.get(key))


_WATCHES: dict[str, Callable[..., Predicate]] = {
    "holds_peers": holds_peers,
    "has_peer_key": has_peer_key,
    "peer_endpoints": peer_endpoints,
    "top_mentions": top_mentions,
}


@dataclass(frozen=True, slots=True)
class Watch:
    """One of the predicates above by name and arguments: what a measurement
    waits for, in a form that crosses a pipe to a load-generator shard
    (bench/loadgen/shards.py), where a function would not."""

    name: str
    args: tuple[Any, ...] = ()

    def __post_init__(self) -> None:
        if self.name not in _WATCHES:
            raise ValueError(f"no predicate named {self.name!r}")

    def predicate(self) -> Predicate:
        return _WATCHES[self.name](*self.args)


def tune_gc() -> None:
    """For a process that runs a fleet and little else (a shard, a profile)."""
    gc.set_threshold(*LOADER_GC_THRESHOLDS)
