"""The HTTP/1.1 front door, over a real socket to an in-process server:
keep-alive, limits, and the answers clients get for requests it refuses."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import AsyncIterator, MutableMapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from server.edge.http1 import BadRequest, FrontDoor, RequestHead, parse_request_head
from server.edge.http1_conn import Http1Server, NeedData, Refused, Request, Upgrade
from server.protocol import derp
from server.protocol.derp import ClientInfo, FrameDecoder, FrameType
from tests.unit.control_client import Device, async_test, join, running_server


class Http1:
    """A raw HTTP/1.1 connection that reads responses by Content-Length or chunks."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Http1:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def send(self, data: bytes, *, byte_at_a_time: bool = False) -> None:
        for part in [data[i : i + 1] for i in range(len(data))] if byte_at_a_time else [data]:
            self.writer.write(part)
            await self.writer.drain()

    async def response(self) -> tuple[int, dict[str, str], bytes]:
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 5)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            body = await self.reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding") == "chunked":
            body = b""
            while size := int((await self.reader.readuntil(b"\r\n")).strip(), 16):
                body += (await self.reader.readexactly(size + 2))[:-2]
            await self.reader.readuntil(b"\r\n")
        else:
            body = await self.reader.read()
        return status, headers, body

    async def closed_by_server(self) -> bool:
        return await asyncio.wait_for(self.reader.read(1), 5) == b""

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except ConnectionError:
            pass


def get(path: str, *extra: str) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1", *extra, "", ""]
    return "\r\n".join(lines).encode()


@async_test
async def test_keep_alive_serves_two_requests_on_one_connection(tmp_path: Path) -> None:
    async with running_server(tmp_path) as srv:
        conn = await Http1.open(srv.port)
        await conn.send(get("/key?v=133"))
        status, _, body = await conn.response()
        assert status == 200 and json.loads(body)["publicKey"].startswith("mkey:")
        # Fed one byte at a time, the second request on the same connection still parses.
        await conn.send(get("/health"), byte_at_a_time=True)
        status, _, body = await conn.response()
        assert status == 200 and json.loads(body)["status"] == "ok"
        await conn.close()


@async_test
async def test_pipelined_requests_are_answered_in_order(tmp_path: Path) -> None:
    async with running_server(tmp_path) as srv:
        conn = await Http1.open(srv.port)
        await conn.send(get("/health") + get("/key"))
        assert b"status" in (await conn.response())[2]
        assert b"publicKey" in (await conn.response())[2]
        await conn.close()


@async_test
async def test_connection_close_is_honoured(tmp_path: Path) -> None:
    async with running_server(tmp_path) as srv:
        conn = await Http1.open(srv.port)
        await conn.send(get("/health", "Connection: close"))
        status, headers, _ = await conn.response()
        assert status == 200 and headers.get("connection") == "close"
        assert await conn.closed_by_server()
        await conn.close()


@async_test
async def test_oversized_request_head_gets_431(tmp_path: Path) -> None:
    async with running_server(tmp_path) as srv:
        conn = await Http1.open(srv.port)
        await conn.send(get("/health", "X-Padding: " + "a" * 70_000))
        status, _, body = await conn.response()
        assert status == 431 and b"too large" in body
        await conn.close()


@async_test
async def test_derp_without_upgrade_gets_426(tmp_path: Path) -> None:
    async with running_server(tmp_path) as srv:
        for extra in ((), ("Connection: upgrade", "Upgrade: websocket")):
            conn = await Http1.open(srv.port)
            await conn.send(get("/derp", *extra))
            status, _, body = await conn.response()
            assert status == 426 and b"upgrade" in body.lower()
            await conn.close()


@async_test
async def test_refused_request_bodies(tmp_path: Path) -> None:
    async with running_server(tmp_path) as srv:
        # Chunked bodies are served now (test_chunked_request_body_reaches_the_app);
        # a transfer-coding other than chunked is what gets refused.
        cases = {
            b"POST /health HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n": 501,
            b"POST /health HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999\r\n\r\n": 413,
            b"POST /health HTTP/1.1\r\nHost: a\r\nContent-Length: ten\r\n\r\n": 400,
            b"NONSENSE\r\n\r\n": 400,
            b"GET / HTTP/1.1\r\nHost: a\r\nbad header line\r\n\r\n": 400,
            b"GET /health HTTP/1.1\r\n\r\n": 400,  # HTTP/1.1 without Host (RFC 9112 3.2)
        }
        for request, want in cases.items():
            conn = await Http1.open(srv.port)
            await conn.send(request)
            status, _, _ = await conn.response()
            assert status == want, request
            await conn.close()


def test_request_head_parsing() -> None:
    head = parse_request_head(
        b"POST /ts2021?x=1 HTTP/1.1\r\nHost: a\r\nUpgrade: Tailscale-Control-Protocol\r\n"
        b"Connection: Upgrade, keep-alive"
    )
    assert (head.method, head.path, head.query, head.version) == ("POST", "/ts2021", "x=1", "1.1")
    assert head.upgrade == "tailscale-control-protocol"
    assert head.header_tokens("connection") == {"upgrade", "keep-alive"}
    assert head.header("x-missing", "default") == "default"
    for bad in (b"GET /\r\n", b"GET / HTTP/2.0", b"GET / HTTP/1.1\r\n Host: folded"):
        with pytest.raises(BadRequest) as info:
            parse_request_head(bad)
        assert info.value.status == 400


def post(path: str, body: bytes, *, chunks: int = 0) -> bytes:
    """A POST with `body` by Content-Length, or split into `chunks` chunks."""
    if not chunks:
        head = f"POST {path} HTTP/1.1\r\nHost: a\r\nContent-Length: {len(body)}\r\n\r\n"
        return head.encode() + body
    step = max(1, -(-len(body) // chunks))
    parts = [body[i : i + step] for i in range(0, len(body), step)]
    framed = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"
    return (
        f"POST {path} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n".encode() + framed
    )


async def echo_app(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
    """Answers with the method, path and request body it was given."""
    message = await receive()
    body = f"{scope['method']} {scope['path']} ".encode() + message["body"]
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


@asynccontextmanager
async def front_door(idle_timeout: float = 75.0, **upgrades: Any) -> AsyncIterator[int]:
    """A FrontDoor on 127.0.0.1 with the echo app and `upgrades` by path name."""
    paths = {"/" + name: handler for name, handler in upgrades.items()}
    log = logging.getLogger("tailnetd.test")
    door = FrontDoor(echo_app, paths, log=log, idle_timeout=idle_timeout)
    listener = await asyncio.start_server(door.handle, "127.0.0.1", 0)
    try:
        yield listener.sockets[0].getsockname()[1]
    finally:
        listener.close()
        await listener.wait_closed()


@async_test
async def test_chunked_request_body_reaches_the_app() -> None:
    async with front_door() as port:
        conn = await Http1.open(port)
        await conn.send(post("/echo", b"hello, chunked world", chunks=4), byte_at_a_time=True)
        status, headers, body = await conn.response()
        assert status == 200 and body == b"POST /echo hello, chunked world"
        # The app gave no length: the response was streamed chunked, and the
        # connection stays open for the next request.
        assert headers.get("transfer-encoding") == "chunked"
        await conn.send(post("/again", b"x" * 1000))
        assert (await conn.response())[2] == b"POST /again " + b"x" * 1000
        await conn.close()


@async_test
async def test_idle_connection_is_closed_after_the_timeout() -> None:
    async with front_door(idle_timeout=0.2) as port:
        conn = await Http1.open(port)
        await conn.send(get("/first"))
        assert (await conn.response())[0] == 200
        # Then nothing, or half a head: either way the server hangs up, unanswered.
        assert await conn.closed_by_server()
        await conn.close()
        conn = await Http1.open(port)
        await conn.send(b"GET /slow HTTP/1.1\r\nHost: a\r\n")
        assert await conn.closed_by_server()
        await conn.close()


@async_test
async def test_keep_alive_serves_three_requests_on_one_connection(tmp_path: Path) -> None:
    async with running_server(tmp_path) as srv:
        conn = await Http1.open(srv.port)
        wants = (("/health", "status"), ("/key?v=133", "publicKey"), ("/health", "status"))
        for path, field in wants:
            await conn.send(get(path))
            status, headers, body = await conn.response()
            assert status == 200 and field in json.loads(body)
            assert headers.get("connection") != "close"
        await conn.close()


@async_test
async def test_pipelined_bodies_are_answered_in_order() -> None:
    async with front_door() as port:
        conn = await Http1.open(port)
        await conn.send(post("/1", b"one", chunks=2) + post("/2", b"two") + get("/3"))
        answers = [(await conn.response())[2] for _ in range(3)]
        assert answers == [b"POST /1 one", b"POST /2 two", b"GET /3 "]
        await conn.close()


@async_test
async def test_http10_request_is_answered_and_closed() -> None:
    async with front_door() as port:
        conn = await Http1.open(port)
        await conn.send(b"GET /old HTTP/1.0\r\n\r\n")
        status, headers, body = await conn.response()
        # No chunked framing for an HTTP/1.0 client: the body ends at the close.
        assert status == 200 and body == b"GET /old " and "transfer-encoding" not in headers
        assert await conn.closed_by_server()
        await conn.close()


@async_test
async def test_malformed_request_line_gets_400_without_echo() -> None:
    async with front_door() as port:
        for line in (b"GET /\r\n\r\n", b"GET / HTTP/2.0\r\n\r\n", b"G<script> / HTTP/1.1\r\n\r\n"):
            conn = await Http1.open(port)
            await conn.send(line)
            status, _, body = await conn.response()
            assert status == 400 and body == b"malformed request\n", line
            assert await conn.closed_by_server()
            await conn.close()


@async_test
async def test_oversized_chunked_body_gets_413() -> None:
    async with front_door() as port:
        conn = await Http1.open(port)
        # Declares 5 MiB in one chunk; refused once the limit is passed.
        await conn.send(
            b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n500000\r\n"
            + b"a" * (4 * 1024 * 1024 + 1)
        )
        status, _, body = await conn.response()
        assert status == 413 and body == b"request body too large\n"
        await conn.close()


@async_test
async def test_upgrade_handler_gets_the_bytes_sent_right_after_the_head() -> None:
    seen: list[tuple[str, bytes]] = []

    async def handler(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: RequestHead
    ) -> None:
        got = await reader.readexactly(5) + await reader.read(100) + await reader.readexactly(3)
        seen.append((head.upgrade, got))
        writer.write(b"ok")
        await writer.drain()

    async with front_door(ts2021=handler, derp=handler) as port:
        for path, proto in (("/ts2021", "tailscale-control-protocol"), ("/derp", "DERP")):
            conn = await Http1.open(port)
            head = f"POST {path} HTTP/1.1\r\nHost: a\r\nUpgrade: {proto}\r\n\r\n"
            # The early bytes arrive in the same segment as the head; more come later.
            await conn.send(head.encode() + b"early-bytes")
            await asyncio.sleep(0.05)
            await conn.send(b"end")
            assert await conn.reader.readexactly(2) == b"ok"
            await conn.close()
    assert seen == [
        ("tailscale-control-protocol", b"early-bytesend"),
        ("derp", b"early-bytesend"),
    ]


@async_test
async def test_derp_upgrade_with_client_info_sent_before_the_answer(tmp_path: Path) -> None:
    async with running_server(tmp_path) as srv:
        device = Device("relay-user")
        control = await join(srv, device)
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        # The client knows the relay's key from the DERP map, so with fast start it
        # may send its ClientInfo in the same segment as the upgrade request.
        info = derp.client_info_frame(
            device.node, srv.derp_key.public(), ClientInfo(version=2), os.urandom(24)
        )
        writer.write(
            b"GET /derp HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\n"
            b"Upgrade: DERP\r\nDerp-Fast-Start: 1\r\n\r\n" + info
        )
        decoder, frames = FrameDecoder(), []
        while len(frames) < 2:
            frames += decoder.receive_data(await asyncio.wait_for(reader.read(4096), 5))
        assert [f.type for f in frames[:2]] == [FrameType.SERVER_KEY, FrameType.SERVER_INFO]
        await Http1(reader, writer).close()
        await control.close()


def test_http1_server_fed_whole_byte_at_a_time_and_with_trailing_data() -> None:
    wire = post("/a", b"body", chunks=2) + get("/b") + b"POST /ts2021 HTTP/1.1\r\nHost: a\r\n"
    wire += b"Upgrade: tailscale-control-protocol\r\n\r\nnoise"
    for step in (len(wire), 1, 7):
        conn = Http1Server({"/ts2021"})
        events: list[object] = []
        parts = [wire[i : i + step] for i in range(0, len(wire), step)]
        while True:
            event = conn.next_event()
            if isinstance(event, NeedData):
                conn.receive_data(parts.pop(0) if parts else b"")
                continue
            events.append(event)
            if isinstance(event, Request):
                out = conn.start_response(200, [(b"content-length", b"0")])
                out += conn.send_body(b"", more=False)
                assert out.startswith(b"HTTP/1.1 200 OK\r\n")
                assert conn.finish_response()
            else:
                break
        assert [e.head.path for e in events if isinstance(e, Request | Upgrade)] == [
            "/a",
            "/b",
            "/ts2021",
        ]
        assert isinstance(events[0], Request) and events[0].body == b"body"
        upgrade = events[-1]
        assert isinstance(upgrade, Upgrade)
        # What the parser read past the head, plus what is still on the socket.
        assert upgrade.trailing + b"".join(parts) == b"noise"


def test_http1_server_refusals_name_no_request_bytes() -> None:
    cases = {
        b"GET /x HTTP/1.1\r\nHost: a\r\nX: " + b"a" * 70_000 + b"\r\n\r\n": 431,
        b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n20\r\n"
        + b"b" * 32
        + b"\r\n": 413,
        b"BAD\x00<evil> / HTTP/1.1\r\n\r\n": 400,
    }
    for wire, status in cases.items():
        conn = Http1Server(max_body=16)
        conn.receive_data(wire)
        event = conn.next_event()
        assert isinstance(event, Refused) and event.status == status, wire[:40]
        assert b"evil" not in event.response and b"aaaa" not in event.response
