"""The socket side of one /ts2021 connection, as an asyncio protocol.

Until the upgrade completes it collects the HTTP/1.1 response head and the
Noise handshake's response; after `start`, each read goes straight to the
client's `on_data`, in the event loop's own read callback. A StreamReader
and a reader task cost a buffer copy and a task wake per read, and a client
in a 1,000-node mesh reads once or more for every join.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

__all__ = ["MAX_HEAD", "UpgradePump"]

MAX_HEAD = 16384  # an upgrade response's head is a few lines


class UpgradePump(asyncio.Protocol):
    """`upgraded`: (response head, handshake response) once both are in (the
    head alone if it is not a 101); then `start` hands over every read."""

    def __init__(self, response_len: int) -> None:
        self._response_len = response_len
        self._buffer = bytearray()
        self._rest_from = 0
        self.upgraded: asyncio.Future[tuple[bytes, bytes]] = (
            asyncio.get_running_loop().create_future()
        )
        self.transport: asyncio.Transport | None = None
        self._on_data: Callable[[bytes], None] | None = None
        self._on_lost: Callable[[], None] | None = None
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self._on_data is not None:
            self._on_data(data)
            return
        self._buffer += data
        if self.upgraded.done():
            return  # bytes after the handshake, for `start`
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > MAX_HEAD:
                self._fail(ConnectionError("upgrade response head too long"))
            return
        head = bytes(self._buffer[: end + 4])
        if not head.startswith(b"HTTP/1.1 101 "):
            self.upgraded.set_result((head, b""))
            return
        start = end + 4
        if len(self._buffer) - start >= self._response_len:
            self._rest_from = start + self._response_len
            self.upgraded.set_result((head, bytes(self._buffer[start : self._rest_from])))

    def start(self, on_data: Callable[[bytes], None], on_lost: Callable[[], None]) -> None:
        """Every read from now on to `on_data` (what came after the handshake
        first); `on_lost` once the connection is gone."""
        rest = bytes(self._buffer[self._rest_from :])
        self._buffer.clear()
        self._on_data, self._on_lost = on_data, on_lost
        if rest:
            on_data(rest)
        if self.lost:
            on_lost()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._fail(ConnectionError("connection closed during the upgrade"))
        if self._on_lost is not None:
            self._on_lost()

    def _fail(self, exc: Exception) -> None:
        if not self.upgraded.done():
            self.upgraded.set_exception(exc)
            self.upgraded.exception()  # a caller's timeout may have gone: not "never retrieved"
