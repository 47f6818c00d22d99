"""What an idle streaming session keeps alive in the server: the references
that decide memory per node, asserted by structure (what is still reachable),
never by byte counts."""

from __future__ import annotations

import asyncio
import gc
import weakref
from pathlib import Path

from server.edge.http1 import _lighten
from tests.unit.control_client import USERS, Device, async_test, poll, running_server

NO_PEERS = '{"acls": []}\n'  # nobody sees anybody: a join wakes no other stream


@async_test
async def test_an_idle_stream_does_not_keep_the_replaced_policy_index(tmp_path: Path) -> None:
    files = {"users.yaml": USERS, "policy.hujson": NO_PEERS}
    async with running_server(tmp_path, files=files) as srv:
        _, stream, _ = await poll(srv, Device("laptop"))
        served = weakref.ref(srv.tailnet.views)
        # Each join recompiles into a new context; the laptop's stream is not
        # woken (it sees nobody), so it waits on what its first map came from.
        for name in ("desktop", "phone"):
            await poll(srv, Device(name))
        assert srv.tailnet.views is not served()
        gc.collect()
        assert served() is None, gc.get_referrers(served())
        stream.cancel()


@async_test
async def test_a_streaming_connection_keeps_no_request_head(tmp_path: Path) -> None:
    async with running_server(tmp_path) as srv:
        _, stream, first = await poll(srv, Device("laptop"))
        assert "Node" in first
        gc.collect()
        alive = {type(o).__name__ for o in gc.get_objects()}
        # The /ts2021 upgrade's HTTP/1 head (its headers, the handshake) is
        # nobody's to keep once the connection runs.
        assert "RequestHead" not in alive
        stream.cancel()


@async_test
async def test_a_connection_waits_to_drain_without_a_deque() -> None:
    lists: list[object] = []
    size = 8 * 2**20  # far past the transport's high-water mark: drain must wait

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _lighten(writer)
        lists.append(getattr(writer.transport.get_protocol(), "_drain_waiters", None))
        writer.write(b"x" * size)
        await writer.drain()  # paused until the client reads: a waiter in the list
        writer.close()

    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await asyncio.sleep(0.05)  # let the server fill its buffer first
    assert len(await reader.read()) == size
    writer.close()
    server.close()
    await server.wait_closed()
    assert lists == [[]]
