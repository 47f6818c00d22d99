"""HTTP/1.1 at the front door: read one request head, then either hand the raw
connection to an upgrade handler (/ts2021, /derp) or serve it through ASGI.

ASGI servers cannot give up a socket after a 101, so the front door reads the
request head itself. Plain requests are bridged to the starlette app here with
a deliberately small HTTP/1.1 implementation: Content-Length bodies only,
keep-alive, chunked responses when the app streams without a length.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

__all__ = ["BadRequest", "FrontDoor", "RequestHead", "read_request_head"]

MAX_HEAD = 64 * 1024
MAX_BODY = 4 * 1024 * 1024
IDLE_TIMEOUT = 75.0

ASGIApp = Callable[
    [
        MutableMapping[str, Any],
        Callable[[], Awaitable[MutableMapping[str, Any]]],
        Callable[[MutableMapping[str, Any]], Awaitable[None]],
    ],
    Awaitable[None],
]


class BadRequest(Exception):
    """The client sent something that is not an HTTP/1.1 request we accept."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True, slots=True)
class RequestHead:
    method: str
    target: str
    version: str
    headers: tuple[tuple[str, str], ...] = field(default=())

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def query(self) -> str:
        return self.target.split("?", 1)[1] if "?" in self.target else ""

    def header(self, name: str, default: str = "") -> str:
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return default

    def header_tokens(self, name: str) -> set[str]:
        return {t.strip().lower() for t in self.header(name).split(",") if t.strip()}

    @property
    def upgrade(self) -> str:
        return self.header("upgrade").strip().lower()


def parse_request_head(data: bytes) -> RequestHead:
    try:
        text = data.decode("latin-1")
    except UnicodeDecodeError as exc:  # pragma: no cover - latin-1 decodes anything
        raise BadRequest(400, "bad encoding") from exc
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise BadRequest(400, "malformed request line")
    headers = []
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise BadRequest(400, "malformed header line")
        headers.append((name.lower(), value.strip()))
    return RequestHead(parts[0], parts[1], parts[2][5:], tuple(headers))


async def read_request_head(
    reader: asyncio.StreamReader, timeout: float = IDLE_TIMEOUT
) -> RequestHead | None:
    """Read one request head; None on a clean EOF before any byte."""
    try:
        data = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    except asyncio.IncompleteReadError as exc:
        if not exc.partial.strip():
            return None
        raise BadRequest(400, "truncated request head") from exc
    except asyncio.LimitOverrunError as exc:
        raise BadRequest(431, "request head too large") from exc
    except TimeoutError:
        return None
    return parse_request_head(data[:-4])


UpgradeHandler = Callable[
    [asyncio.StreamReader, asyncio.StreamWriter, RequestHead], Awaitable[None]
]


class FrontDoor:
    """One TCP port: upgrades by path, everything else through ASGI."""

    def __init__(
        self,
        app: ASGIApp,
        upgrades: Mapping[str, UpgradeHandler],
        *,
        log: logging.Logger,
        scheme: str = "http",
    ) -> None:
        self._app = app
        self._upgrades = upgrades
        self._log = log
        self._scheme = scheme

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await read_request_head(reader)
                except BadRequest as exc:
                    await _write_simple(writer, exc.status, exc.reason)
                    return
                if head is None:
                    return
                handler = self._upgrades.get(head.path)
                if handler is not None and head.upgrade:
                    await handler(reader, writer, head)
                    return
                if not await self._serve_asgi(reader, writer, head):
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except Exception:  # one connection's bug must not take the server down
            self._log.exception("front door: connection failed")
        finally:
            writer.close()

    async def _serve_asgi(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: RequestHead
    ) -> bool:
        if head.header("transfer-encoding"):
            await _write_simple(writer, 411, "chunked request bodies are not supported")
            return False
        try:
            length = int(head.header("content-length", "0") or "0")
        except ValueError:
            await _write_simple(writer, 400, "bad content-length")
            return False
        if length < 0 or length > MAX_BODY:
            await _write_simple(writer, 413, "request body too large")
            return False
        body = await reader.readexactly(length) if length else b""
        keep_alive = head.version == "1.1" and "close" not in head.header_tokens("connection")
        peer = writer.get_extra_info("peername") or ("", 0)
        sock = writer.get_extra_info("sockname") or ("", 0)
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": head.version,
            "method": head.method,
            "scheme": self._scheme,
            "path": unquote(head.path),
            "raw_path": head.path.encode("latin-1"),
            "query_string": head.query.encode("latin-1"),
            "root_path": "",
            "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in head.headers],
            "client": (peer[0], peer[1]) if len(peer) >= 2 else None,
            "server": (sock[0], sock[1]) if len(sock) >= 2 else None,
        }
        sent_body = False

        async def receive() -> dict[str, Any]:
            nonlocal sent_body
            if not sent_body:
                sent_body = True
                return {"type": "http.request", "body": body, "more_body": False}
            # The app asked again: it waits for a disconnect, which we can't see cheaply.
            await asyncio.Event().wait()
            raise AssertionError("unreachable")

        state: dict[str, Any] = {"chunked": False, "started": False, "done": False}

        async def send(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    (k.decode("latin-1").lower(), v.decode("latin-1"))
                    for k, v in message.get("headers", [])
                ]
                names = {k for k, _ in headers}
                if "content-length" not in names and head.method != "HEAD":
                    headers.append(("transfer-encoding", "chunked"))
                    state["chunked"] = True
                if not keep_alive:
                    headers.append(("connection", "close"))
                status = int(message["status"])
                lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}"]
                lines += [f"{k}: {v}" for k, v in headers]
                writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
                state["started"] = True
            elif message["type"] == "http.response.body":
                chunk = message.get("body", b"")
                if head.method == "HEAD":
                    chunk = b""
                if state["chunked"]:
                    if chunk:
                        writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    if not message.get("more_body", False):
                        writer.write(b"0\r\n\r\n")
                elif chunk:
                    writer.write(chunk)
                if not message.get("more_body", False):
                    state["done"] = True
                await writer.drain()

        await self._app(scope, receive, send)
        if not state["started"]:
            await _write_simple(writer, 500, "internal error")
            return False
        return keep_alive and state["done"]


_REASONS = {
    101: "Switching Protocols",
    200: "OK",
    204: "No Content",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    411: "Length Required",
    413: "Content Too Large",
    426: "Upgrade Required",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


async def _write_simple(writer: asyncio.StreamWriter, status: int, text: str) -> None:
    body = (text + "\n").encode()
    writer.write(
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body
    )
    try:
        await writer.drain()
    except ConnectionError:
        pass
