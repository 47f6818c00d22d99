"""A reconnect costs its own map, not the tailnet: after a server restart
every client polls again at once, so whatever a reconnect does per node of
the tailnet is paid n² times (5,000 clients must stream again within 20 s,
issue 11). Measured on the path a real map poll takes (ControlHandler, up to
the first map), in a small and a large tailnet where each node sees the same
few peers: the store is not read at all, and the Python calls made and the
memory allocated do not grow with the tailnet."""

from __future__ import annotations

import json
import logging
import sys
import tracemalloc
from pathlib import Path
from types import FrameType
from typing import Any

from gitctl.policy import parse_policy
from server.control import ControlHandler, ControlSettings
from server.edge.control_conn import ControlRequest
from server.protocol.keys import MachinePublic, NodePublic
from server.store import open_store
from server.store.interface import Store
from server.store.model import Registration
from server.tailnet import NodeRegistry, Tailnet, TailnetSource
from server.wire import DerpRegion
from tests.unit.control_client import T0, async_test

LOG = logging.getLogger("test")
PER_USER = 4  # each node sees the other nodes of its user: 3 peers at any size
SELF_ONLY = parse_policy(
    {"acls": [{"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self:*"]}]}
)
HOSTINFO = {"Hostname": "sim", "OS": "linux"}
VERSION = 130


class CountingStore:
    """The store, counting the calls made to it."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.store, name)
        if not callable(attr):
            return attr

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            return attr(*args, **kwargs)

        return counted


def raw(n: int) -> bytes:
    return n.to_bytes(32, "big")


def map_request(n: int) -> ControlRequest:
    body = {
        "Version": VERSION,
        "NodeKey": NodePublic(raw(n)).text,
        "Hostinfo": HOSTINFO,
        "Stream": True,
        "KeepAlive": True,
    }
    return ControlRequest(
        MachinePublic(raw(n)), VERSION, "POST", "/machine/map", (), json.dumps(body).encode()
    )


class Server:
    """A tailnet of `size` nodes behind a ControlHandler, as after a restart:
    every node in the store, none streaming."""

    def __init__(self, tmp: Path, size: int) -> None:
        self.store = open_store(tmp / f"{size}.db")
        self.counting = CountingStore(self.store)
        self.registry = NodeRegistry(self.counting, log=LOG)  # type: ignore[arg-type]
        users = {f"u{i}": (f"u{i}@example.com", f"U{i}") for i in range(size // PER_USER)}
        for n in range(size):
            self.registry.register(
                Registration(
                    machine_key=MachinePublic(raw(n)),
                    node_key=NodePublic(raw(n)),
                    hostname=f"n{n}",
                    user=f"u{n // PER_USER}",
                    now=T0,
                )
            )
        source = TailnetSource(
            id="a", domain="tailnet.example", dns_config={}, users=users, policy=SELF_ONLY
        )
        self.tailnet = Tailnet(
            nodes=self.registry.nodes(),
            source=source,
            derp_regions=[DerpRegion(999, "test", "test", "127.0.0.1", 3340, 0)],
            log=LOG,
            clock=lambda: T0,
            defer=lambda _: False,
        )
        self.registry.subscribe(self.tailnet.apply)
        self.handler = ControlHandler(
            self.tailnet,
            self.registry,
            self.counting,  # type: ignore[arg-type]
            clock=lambda: T0,
            settings=ControlSettings,
            log=LOG,
        )

    async def reconnect(self, n: int) -> tuple[dict[str, Any], Any]:
        """Node `n` polls: its first map, and the open stream."""
        response = await self.handler(map_request(n))
        assert response.status == 200 and response.stream is not None
        frame = await anext(response.stream)
        return _decode(frame), response.stream

    def close(self) -> None:
        self.store.close()


def _decode(frame: bytes) -> dict[str, Any]:
    import zstandard

    size = int.from_bytes(frame[:4], "little")
    body = frame[4 : 4 + size]
    try:
        body = zstandard.ZstdDecompressor().decompress(body)
    except zstandard.ZstdError:
        pass
    msg: dict[str, Any] = json.loads(body)
    return msg


class Work:
    """Python calls made while it runs, and the bytes it allocated that are
    still held when it ends (a copy of the tailnet's node map is)."""

    def __init__(self) -> None:
        self.calls = 0
        self.held = 0

    def _count(self, frame: FrameType, event: str, arg: object) -> None:
        if event in ("call", "c_call"):
            self.calls += 1

    def __enter__(self) -> Work:
        tracemalloc.start()
        sys.setprofile(self._count)
        return self

    def __exit__(self, *exc: object) -> None:
        sys.setprofile(None)
        self.held = tracemalloc.get_traced_memory()[0]  # only what was traced: since enter
        tracemalloc.stop()


async def measure(server: Server, nodes: range) -> tuple[list[str], int, int]:
    """Store calls, the most Python calls and the median memory held of one reconnect
    of each of `nodes` (after one warm-up poll each, as after a restart every
    client has polled before)."""
    streams = []
    for n in nodes:  # warm-up: the version and Hostinfo the client reports are written
        msg, stream = await server.reconnect(n)
        await stream.aclose()
    server.counting.calls.clear()
    calls, held = 0, []
    for n in nodes:
        with Work() as work:
            msg, stream = await server.reconnect(n)
        assert len(msg["Peers"]) == PER_USER - 1  # its own user's other nodes
        streams.append(stream)
        calls = max(calls, work.calls)
        held.append(work.held)
    store_calls = list(server.counting.calls)
    for stream in streams:
        await stream.aclose()
    return store_calls, calls, sorted(held)[len(held) // 2]


@async_test
async def test_a_reconnect_costs_its_own_map_not_the_tailnet(tmp_path: Path) -> None:
    small, large = Server(tmp_path, 40), Server(tmp_path, 4000)
    try:
        # Reconnect nodes near the end too: their ids are the largest.
        small_store, small_calls, small_held = await measure(small, range(30, 38))
        large_store, large_calls, large_held = await measure(large, range(3990, 3998))
    finally:
        small.close()
        large.close()
    # Nothing is read from (or written to) the store: the registry answers.
    assert small_store == [] and large_store == []
    # 100x the nodes, the same work (a few calls of slack: dict and HAMT depth).
    assert large_calls <= small_calls * 1.1, (small_calls, large_calls)
    assert large_held <= small_held + 16_384, (small_held, large_held)
