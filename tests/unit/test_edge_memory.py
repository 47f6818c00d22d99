"""What a streaming control connection costs the server in memory: the edge
(HTTP/1 front door, Noise, HTTP/2 and the per-stream tasks) holds a bounded
amount per connection, so 5,000 idle streams fit in a small server.

The clients run in another process (bench/loadgen's shards), so what
tracemalloc counts here is the server's."""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
from pathlib import Path

from bench.loadgen.client import ServerAddress
from bench.loadgen.shards import ShardedFleet
from tests.unit.control_client import async_test_within, preauth_key, running_server

USERS = "users:\n  - {name: alice, email: alice@example.com, display_name: Alice}\n"
NO_PEERS = '{"acls": []}\n'
CONNECTIONS = 100
# Allocated where the innermost frame is the edge or its protocol libraries.
# Measured 6.1 KiB per streaming connection on our HTTP/2 codec (h2_codec.py),
# 9.2 KiB on h2 (compacted) before it, 25 KiB before that cut (h2's settings
# and hpack deques, the HTTP/1 machine and the request kept while the map
# streams). The bound leaves room for noise, not for those.
EDGE_BYTES_PER_CONNECTION = 8 * 1024
EDGE = (
    "*/server/edge/*",
    "*/server/protocol/*",
    "*/h2/*",
    "*/hpack/*",
    "*/hyperframe/*",
    "*/h11/*",
)


async def _fleet(port: int, key: str) -> ShardedFleet:
    fleet = ShardedFleet(ServerAddress.loopback(port), key, shards=1, concurrency=8)
    await fleet.ready()
    return fleet


async def _stream(fleet: ShardedFleet, count: int) -> None:
    await fleet.add(count)
    await asyncio.sleep(0.3)  # the first maps written, the streams idle


def _edge_bytes(snapshot: tracemalloc.Snapshot) -> int:
    """Bytes allocated by the edge itself (its innermost frame), not by the
    handlers it calls: the map and registry have their own budgets."""
    return sum(
        stat.size
        for stat in snapshot.filter_traces(
            [tracemalloc.Filter(True, pattern) for pattern in EDGE]
        ).statistics("filename")
    )


@async_test_within(120)  # 100 connections under tracemalloc: ~20 s on a loaded machine
async def test_an_idle_streaming_connection_holds_little_edge_memory(tmp_path: Path) -> None:
    files = {"users.yaml": USERS, "policy.hujson": NO_PEERS}
    async with running_server(tmp_path, files=files) as srv:
        fleet = await _fleet(srv.port, preauth_key(srv, reusable=True))
        try:
            # Warm up first: lazily built module state is not a connection's cost.
            await _stream(fleet, 5)
            gc.collect()
            tracemalloc.start(4)
            try:
                before = _edge_bytes(tracemalloc.take_snapshot())
                await _stream(fleet, CONNECTIONS)
                gc.collect()
                after = _edge_bytes(tracemalloc.take_snapshot())
            finally:
                tracemalloc.stop()
        finally:
            await fleet.close()
    per_connection = (after - before) / CONNECTIONS
    assert per_connection <= EDGE_BYTES_PER_CONNECTION, f"{per_connection / 1024:.1f} KiB"
