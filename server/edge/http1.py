"""HTTP/1.1 at the front door: the asyncio pump around `Http1Server` (h11).

Upgrade requests (/ts2021, /derp) hand the raw connection to their handler;
everything else is served through ASGI. ASGI servers cannot give up a socket
after a 101, so the front door owns the socket and bridges plain requests to
the starlette app here: whole bounded request bodies in, streamed responses
out (chunked when the app gives no length), keep-alive and pipelining.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any
from urllib.parse import unquote

from server.edge.http1_conn import (
    MAX_BODY,
    MAX_HEAD,
    BadRequest,
    Closed,
    Http1Server,
    NeedData,
    Refused,
    Request,
    RequestHead,
    Upgrade,
    parse_request_head,
    refusal,
)

__all__ = [
    "MAX_BODY",
    "MAX_HEAD",
    "BadRequest",
    "FrontDoor",
    "RequestHead",
    "parse_request_head",
]

IDLE_TIMEOUT = 75.0
READ_SIZE = 64 * 1024

ASGIApp = Callable[
    [
        MutableMapping[str, Any],
        Callable[[], Awaitable[MutableMapping[str, Any]]],
        Callable[[MutableMapping[str, Any]], Awaitable[None]],
    ],
    Awaitable[None],
]

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
        idle_timeout: float = IDLE_TIMEOUT,
    ) -> None:
        self._app = app
        self._upgrades = upgrades
        self._log = log
        self._scheme = scheme
        self._idle_timeout = idle_timeout

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _lighten(writer)
        conn = Http1Server(frozenset(self._upgrades))
        data = b""
        try:
            while True:
                event = conn.next_event()
                if isinstance(event, NeedData):
                    try:
                        # asyncio.timeout, not wait_for: no task wrapped around each read.
                        async with asyncio.timeout(self._idle_timeout):
                            data = await reader.read(READ_SIZE)
                    except TimeoutError:
                        return  # idle (or too slow a request): close without a word
                    conn.receive_data(data)
                elif isinstance(event, Upgrade):
                    upgraded = _PrefixedReader(event.trailing, reader) if event.trailing else reader
                    taken = self._upgrades[event.head.path](upgraded, writer, event.head)
                    # The upgraded connection may stream for days: keep no HTTP/1
                    # state, head or request bytes here (the handler drops the head).
                    del conn, event, data, upgraded
                    await taken
                    return
                elif isinstance(event, Request):
                    if not await self._serve_asgi(conn, writer, event):
                        return
                elif isinstance(event, Refused):
                    writer.write(event.response)
                    await writer.drain()
                    return
                else:
                    assert isinstance(event, Closed)
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except Exception:  # one connection's bug must not take the server down
            self._log.exception("front door: connection failed")
        finally:
            writer.close()

    async def _serve_asgi(
        self, conn: Http1Server, writer: asyncio.StreamWriter, request: Request
    ) -> bool:
        """Run the app for one request; True when the connection stays open."""
        head = request.head
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
                return {"type": "http.request", "body": request.body, "more_body": False}
            # The app asked again: it waits for a disconnect, which we can't see cheaply.
            await asyncio.Event().wait()
            raise AssertionError("unreachable")

        started = done = False
        response_head = b""  # written with the first body bytes: one send, not two

        async def send(message: MutableMapping[str, Any]) -> None:
            nonlocal started, done, response_head
            if message["type"] == "http.response.start":
                status, headers = int(message["status"]), message.get("headers", [])
                response_head = conn.start_response(status, headers)
                started = True
            elif message["type"] == "http.response.body":
                more = bool(message.get("more_body", False))
                body = conn.send_body(message.get("body", b""), more=more)
                writer.write(response_head + body)
                response_head, done = b"", not more
                await writer.drain()

        await self._app(scope, receive, send)
        if not started:
            writer.write(refusal(500, "internal error"))
            return False
        return done and conn.finish_response()


class _PrefixedReader(asyncio.StreamReader):
    """The connection's reader with the bytes the parser already took off the
    socket after an upgrade head put back in front. Upgrade handlers read raw
    bytes with `read`/`readexactly`; line reads are refused while a prefix is left."""

    def __init__(self, prefix: bytes, rest: asyncio.StreamReader) -> None:
        super().__init__()
        self._prefix = prefix
        self._rest = rest

    async def read(self, n: int = -1) -> bytes:
        if not self._prefix:
            return await self._rest.read(n)
        if n < 0:
            return self._take(len(self._prefix)) + await self._rest.read(-1)
        return self._take(n)

    async def readexactly(self, n: int) -> bytes:
        head = self._take(n)
        return head + await self._rest.readexactly(n - len(head)) if len(head) < n else head

    async def readuntil(self, separator: Any = b"\n") -> bytes:
        if self._prefix:
            raise NotImplementedError("line reads after an upgrade with early bytes")
        return await self._rest.readuntil(separator)

    async def readline(self) -> bytes:
        return await self.readuntil(b"\n")

    def at_eof(self) -> bool:
        return not self._prefix and self._rest.at_eof()

    def _take(self, n: int) -> bytes:
        out, self._prefix = self._prefix[:n], self._prefix[n:]
        return out


def _lighten(writer: asyncio.StreamWriter) -> None:
    """asyncio's stream protocol keeps a deque (~700 bytes) of writers waiting
    to drain from birth; a list does what it is used for (append, remove,
    iterate), and a connection that streams for days seldom has a waiter.
    Elsewhere than the asyncio it knows, left as it is (memory, never
    correctness)."""
    protocol = writer.transport.get_protocol()
    waiters = getattr(protocol, "_drain_waiters", None)
    if type(waiters) is deque and not waiters:
        setattr(protocol, "_drain_waiters", [])  # noqa: B010 (a private attribute)
