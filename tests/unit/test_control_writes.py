"""What the control connection writes per registration: the register
response ends its stream on its one DATA frame, and a map poll's response
headers leave with its first map in one write (a send on each side fewer),
or alone after `HEADERS_HOLD` when no message comes."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bench.loadgen.h2tap import DEFAULT_WINDOW
from bench.loadgen.mapstream import read_all
from server.edge import control_conn
from server.edge.control_conn import ControlConnection, ControlRequest, ControlResponse
from tests.unit.control_client import ControlClient, Device, async_test, join, poll, running_server

_HEAD = struct.Struct(">BHBBL")
_DATA, _HEADERS, _END_STREAM = 0x0, 0x1, 0x1

Frame = tuple[int, int, int, int]  # type, flags, stream, length


def _frames(plain: bytes) -> list[Frame]:
    frames, pos = [], 0
    while pos < len(plain):
        high, low, kind, flags, stream_id = _HEAD.unpack_from(plain, pos)
        length = high << 16 | low
        frames.append((kind, flags, stream_id & 0x7FFFFFFF, length))
        pos += _HEAD.size + length
    assert pos == len(plain)
    return frames


def _record_writes(monkeypatch: pytest.MonkeyPatch) -> list[list[Frame]]:
    """The HTTP/2 frames of each write the server's connections make after their preface."""
    writes: list[list[Frame]] = []
    original = ControlConnection._write_out

    def recording(self: ControlConnection) -> None:
        noise: Any = self._noise
        sent: list[bytes] = []
        send = noise.send

        def keep(data: bytes) -> None:
            sent.append(bytes(data))
            send(data)

        noise.send = keep
        try:
            original(self)
        finally:
            del noise.send
        if sent:
            writes.append(_frames(b"".join(sent)))

    monkeypatch.setattr(ControlConnection, "_write_out", recording)
    return writes


def _on(frames: list[Frame], kind: int, stream_id: int) -> list[Frame]:
    return [f for f in frames if f[0] == kind and f[2] == stream_id]


@async_test
async def test_register_response_ends_on_its_data_frame(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_server(tmp_path) as srv:
        writes = _record_writes(monkeypatch)
        client = await join(srv, Device("laptop"))
        [write] = [w for w in writes if _on(w, _HEADERS, 1)]
        # One DATA frame, ending the stream: no empty DATA frame after it.
        [(_, flags, _, length)] = _on(write, _DATA, 1)
        assert flags & _END_STREAM and length > 0
        await client.close()


@async_test
async def test_map_headers_leave_with_the_first_map(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_server(tmp_path) as srv:
        # A node already streaming: the newcomer's first map waits for its
        # join to be compiled in, after the poll's headers are ready.
        other, _, _ = await poll(srv, Device("desktop"))
        writes = _record_writes(monkeypatch)
        dev = Device("laptop")
        client = await join(srv, dev)
        stream = await client.map_stream(dev.map_body())
        first = await stream.next()
        assert first["Node"]["Key"] == dev.node.public().text
        [write] = [w for w in writes if _on(w, _HEADERS, 3)]  # the newcomer's poll
        assert _on(write, _DATA, 3), write  # the first map, in the same write
        assert write.index(_on(write, _HEADERS, 3)[0]) < write.index(_on(write, _DATA, 3)[0])
        # The client's tap took the first map, though it came with the
        # headers: the client's codec holds none of the stream's window back (h2tap.py).
        assert client._h2.streams[3].inbound.current_window_size == DEFAULT_WINDOW
        await client.close()
        await other.close()


@async_test
async def test_held_headers_leave_alone_when_no_message_comes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(control_conn, "HEADERS_HOLD", 0.05)
    release = asyncio.Event()

    async def slow() -> AsyncIterator[bytes]:
        await release.wait()
        yield b"late"

    async def handler(request: ControlRequest) -> ControlResponse:
        return ControlResponse(200, stream=slow())

    async with running_server(tmp_path) as srv:
        srv.control = handler  # type: ignore[assignment]
        client = await ControlClient.connect(srv.port, Device("laptop").machine)
        stream_id, status, body = await asyncio.wait_for(
            client.request("/machine/map", b"{}", tapped=True), 5
        )
        assert status == 200  # the headers came, though no message has
        release.set()
        assert await asyncio.wait_for(read_all(body), 5) == b"late"
        await client.close()


@async_test
async def test_a_stream_reset_while_its_headers_are_held_gets_no_headers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(control_conn, "HEADERS_HOLD", 1.0)
    started, ended = asyncio.Event(), asyncio.Event()

    async def never() -> AsyncIterator[bytes]:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            ended.set()
        yield b""

    async def handler(request: ControlRequest) -> ControlResponse:
        return ControlResponse(200, stream=never())

    async with running_server(tmp_path) as srv:
        srv.control = handler  # type: ignore[assignment]
        writes = _record_writes(monkeypatch)
        client = await ControlClient.connect(srv.port, Device("laptop").machine)
        request = asyncio.ensure_future(client.request("/machine/map", b"{}", tapped=True))
        await asyncio.wait_for(started.wait(), 5)
        client.cancel(1)  # RST_STREAM(CANCEL) while the headers are held
        await asyncio.wait_for(ended.wait(), 5)
        await asyncio.sleep(1.2)  # past the hold
        assert not any(_on(w, _HEADERS, 1) for w in writes), writes
        request.cancel()
        await client.close()
