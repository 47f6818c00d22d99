"""The HTTP/1.1 front door, over a real socket to an in-process server:
keep-alive, limits, and the answers clients get for requests it refuses."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from server.edge.http1 import BadRequest, parse_request_head
from tests.unit.control_client import async_test, running_server


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
        cases = {
            b"POST /health HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n": 411,
            b"POST /health HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n": 413,
            b"POST /health HTTP/1.1\r\nContent-Length: ten\r\n\r\n": 400,
            b"NONSENSE\r\n\r\n": 400,
            b"GET / HTTP/1.1\r\nbad header line\r\n\r\n": 400,
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
