"""A lite map request (no stream: an endpoint change) is answered in the turn
its request ends, without a task (ControlHandler.answer_now,
ControlConnection._start): a task per request was part of every endpoint
change's fixed cost. Requests are still handled in the order they came."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine, Generator
from pathlib import Path
from typing import Any

import pytest

from bench.loadgen.client import ResponseStream, read_all
from server.edge.control_conn import ControlConnection
from tests.unit.control_client import ControlClient, Device, async_test, poll, running_server
from tests.unit.test_control_writes import _DATA, _END_STREAM, _HEADERS, _on, _record_writes


class _Tasks:
    """The names of the coroutines the loop makes tasks of, while recording."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def __call__(
        self,
        loop: asyncio.AbstractEventLoop,
        coro: Coroutine[Any, Any, Any] | Generator[Any, None, Any],
        **kw: Any,
    ) -> asyncio.Task[Any]:
        self.names.append(getattr(coro, "__qualname__", ""))
        return asyncio.Task(coro, loop=loop, **kw)


@async_test
async def test_a_lite_request_is_answered_without_a_task(tmp_path: Path) -> None:
    async with running_server(tmp_path) as srv:
        dev = Device("laptop")
        client, _, _ = await poll(srv, dev)
        loop = asyncio.get_running_loop()
        tasks = _Tasks()
        loop.set_task_factory(tasks)
        try:
            endpoints = ["192.0.2.9:41641"]
            status, body = await client.map_lite(dev.map_body(stream=False, endpoints=endpoints))
            lite = list(tasks.names)
            await client.map_stream(dev.map_body())  # a new poll still has its task
        finally:
            loop.set_task_factory(None)
        assert (status, body) == (200, b"")
        node = srv.store.node_by_node_key(dev.node.public())
        assert node is not None and node.endpoints == tuple(endpoints)
        assert "ControlConnection._serve_stream" not in lite, lite
        assert "ControlConnection._serve_stream" in tasks.names


@async_test
async def test_the_mover_s_own_message_leaves_with_its_lite_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its self node carries the new endpoints; it is queued behind the
    answer, and both leave in one write (one seal, one send)."""
    async with running_server(tmp_path) as srv:
        viewer, mover = Device("viewer"), Device("mover")
        await poll(srv, viewer)
        mclient, mstream, _ = await poll(srv, mover)
        writes = _record_writes(monkeypatch)
        endpoints = ["192.0.2.10:41641"]
        status, _ = await mclient.map_lite(mover.map_body(stream=False, endpoints=endpoints))
        assert status == 200
        own = await asyncio.wait_for(mstream.wait_for(lambda m: "Node" in m), 5)
        assert own["Node"]["Endpoints"] == endpoints
        # The lite request is the mover's third stream (register 1, poll 3).
        [answer] = [w for w in writes if any(f[1] & _END_STREAM for f in _on(w, _HEADERS, 5))]
        assert _on(answer, _DATA, mstream.stream_id), writes


@async_test
async def test_a_lite_request_behind_a_poll_not_yet_handled_waits_its_turn(
    tmp_path: Path,
) -> None:
    """A poll and a lite request read together: the lite request's newer
    Hostinfo is applied last, as they were sent."""
    async with running_server(tmp_path) as srv:
        dev = Device("laptop")
        client, stream, _ = await poll(srv, dev)
        stream.cancel()
        older = {"Hostname": "laptop", "OS": "linux", "OSVersion": "older"}
        newer = {"Hostname": "laptop", "OS": "linux", "OSVersion": "newer"}
        polled = asyncio.ensure_future(client.map_stream(dev.map_body(hostinfo=older)))
        lite = asyncio.ensure_future(client.map_lite(dev.map_body(stream=False, hostinfo=newer)))
        await asyncio.wait_for(asyncio.gather(polled, lite), 5)
        node = srv.store.node_by_node_key(dev.node.public())
        assert node is not None and node.hostinfo is not None
        assert node.hostinfo.os_version == "newer"


async def _lite_in_two_reads(client: ControlClient, body: dict[str, Any]) -> int:
    """A lite map request whose HEADERS the server reads before its body, as
    a real client's often arrive (Go writes them in two records)."""
    data = json.dumps(body).encode()
    stream_id = client._h2.next_stream_id()
    stream = ResponseStream(asyncio.get_running_loop().create_future(), tapped=False)
    client._streams[stream_id] = stream
    headers = [
        (":method", "POST"),
        (":scheme", "https"),
        (":authority", client._authority),
        (":path", "/machine/map"),
        ("content-length", str(len(data))),
    ]
    client._h2.send_headers(stream_id, headers, end_stream=False)
    client._flush()
    await asyncio.sleep(0.05)  # read alone (if not, the test passes without testing)
    client._h2.send_data(stream_id, data, end_stream=True)
    client._flush()
    status = int((await stream.headers)[":status"])
    await read_all(stream)
    return status


@async_test
async def test_reads_with_nothing_to_answer_make_no_write_turn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read that gives the codec nothing to send (a request's HEADERS before
    its body) schedules no write: such a write was a loop turn of every
    endpoint change that sent nothing."""
    async with running_server(tmp_path) as srv:
        viewer, mover = Device("viewer"), Device("mover")
        _, vstream, _ = await poll(srv, viewer)
        mclient, _, _ = await poll(srv, mover)
        empty: list[int] = []
        original = ControlConnection._write_out

        def counting(self: ControlConnection) -> None:
            noise: Any = self._noise
            sent: list[bytes] = []
            send = noise.send
            noise.send = lambda data: (sent.append(data), send(data))
            try:
                original(self)
            finally:
                del noise.send
            if not sent:
                empty.append(1)

        monkeypatch.setattr(ControlConnection, "_write_out", counting)
        for n in range(3):
            endpoints = [f"192.0.2.{n + 1}:41641"]
            body = mover.map_body(stream=False, endpoints=endpoints)
            assert await _lite_in_two_reads(mclient, body) == 200
            await asyncio.wait_for(
                vstream.wait_for(
                    lambda m, e=endpoints: any(
                        p.get("Endpoints") == e for p in m.get("PeersChanged") or ()
                    )
                ),
                5,
            )
        assert empty == []
