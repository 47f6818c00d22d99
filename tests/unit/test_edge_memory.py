"""What a streaming control connection costs the server in memory: the edge
(HTTP/1 front door, Noise, HTTP/2 and the per-stream tasks) holds a bounded
amount per connection, so 5,000 idle streams fit in a small server.

The clients run in a thread with their own event loop, so what tracemalloc
counts as the server's is what the server's loop allocated for them."""

from __future__ import annotations

import asyncio
import gc
import threading
import tracemalloc
from pathlib import Path

from bench.loadgen.client import ServerAddress
from bench.loadgen.fleet import Fleet
from tests.unit.control_client import async_test, preauth_key, running_server

USERS = "users:\n  - {name: alice, email: alice@example.com, display_name: Alice}\n"
NO_PEERS = '{"acls": []}\n'
CONNECTIONS = 25
# Allocated where the innermost frame is the edge or its protocol libraries.
# Measured 30 KiB per streaming connection after the cut, 41 KiB before it
# (h2's settings and hpack deques, the HTTP/1 machine and the request kept
# while the map streams). The bound leaves room for noise, not for those.
EDGE_BYTES_PER_CONNECTION = 34 * 1024
EDGE = (
    "*/server/edge/*",
    "*/server/protocol/*",
    "*/h2/*",
    "*/hpack/*",
    "*/hyperframe/*",
    "*/h11/*",
)


def _clients(port: int, key: str, count: int, up: threading.Event, done: threading.Event) -> None:
    async def main() -> None:
        fleet = Fleet(ServerAddress.loopback(port), key, concurrency=8)
        try:
            await fleet.add(count)
            up.set()
            while not done.is_set():
                await asyncio.sleep(0.02)
        finally:
            up.set()
            await fleet.close()

    asyncio.run(main())


async def _streaming(port: int, key: str, count: int) -> tuple[threading.Thread, threading.Event]:
    up, done = threading.Event(), threading.Event()
    thread = threading.Thread(target=_clients, args=(port, key, count, up, done), daemon=True)
    thread.start()
    while not up.is_set():
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.3)  # the first maps written, the streams idle
    return thread, done


def _edge_bytes(snapshot: tracemalloc.Snapshot) -> int:
    """Bytes allocated by the edge itself (its innermost frame), not by the
    handlers it calls: the map and registry have their own budgets."""
    client = tracemalloc.Filter(False, "*/threading.py", all_frames=True)
    snapshot = snapshot.filter_traces([client])
    return sum(
        stat.size
        for stat in snapshot.filter_traces(
            [tracemalloc.Filter(True, pattern) for pattern in EDGE]
        ).statistics("filename")
    )


@async_test
async def test_an_idle_streaming_connection_holds_little_edge_memory(tmp_path: Path) -> None:
    files = {"users.yaml": USERS, "policy.hujson": NO_PEERS}
    async with running_server(tmp_path, files=files) as srv:
        key = preauth_key(srv, reusable=True)
        # Warm up first: lazily built module state is not a connection's cost.
        warm, warm_done = await _streaming(srv.port, key, 5)
        gc.collect()
        tracemalloc.start(12)
        try:
            before = _edge_bytes(tracemalloc.take_snapshot())
            thread, done = await _streaming(srv.port, key, CONNECTIONS)
            gc.collect()
            after = _edge_bytes(tracemalloc.take_snapshot())
        finally:
            tracemalloc.stop()
        for event, t in ((done, thread), (warm_done, warm)):
            event.set()
            await asyncio.to_thread(t.join)
    per_connection = (after - before) / CONNECTIONS
    assert per_connection <= EDGE_BYTES_PER_CONNECTION, f"{per_connection / 1024:.1f} KiB"
