"""A response body as the control client reads it, and the streaming map poll.

`ResponseStream` is one HTTP/2 stream's response: its headers, then body
chunks, queued for a reader task or handed to a sink as they arrive.
`MapStream` splits a /machine/map body into messages (server/protocol/
mapframe.py): `next()` for a test that awaits them one at a time, or
`listen()` for a load generator's client, whose messages (still compressed:
bench/loadgen/decode.py decodes a message once for every client it reaches)
are handled in the read loop that received them (no task wakes per message;
in a 1,000-node mesh a client receives one for every join).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from bench.loadgen.decode import decode_json
from bench.loadgen.frames import MessageSplitter
from server.protocol.mapframe import MapFrameDecoder, MapFrameError

__all__ = ["MapStream", "ResponseStream", "read_all"]


@dataclass(eq=False)
class ResponseStream:
    """One request's response. Body chunks (None: the end) go to `sink` if set,
    else to `chunks`. `tapped`: a long-lived body the client reads without h2
    once its headers are in (bench/loadgen/h2tap.py)."""

    headers: asyncio.Future[dict[str, str]]
    chunks: asyncio.Queue[bytes | None] = field(default_factory=asyncio.Queue)
    reset_code: int | None = None
    tapped: bool = False
    sink: Callable[[bytes | None], None] | None = None

    def put(self, chunk: bytes | None) -> None:
        if self.sink is not None:
            self.sink(chunk)
        else:
            self.chunks.put_nowait(chunk)


async def read_all(stream: ResponseStream) -> bytes:
    out = bytearray()
    while (chunk := await stream.chunks.get()) is not None:
        out += chunk
    return bytes(out)


class Canceller(Protocol):
    def cancel(self, stream_id: int) -> None: ...


class MapStream:
    """A streaming /machine/map response: its messages in order."""

    def __init__(
        self,
        client: Canceller,
        stream_id: int,
        status: int,
        stream: ResponseStream,
        *,
        keep_raw: bool = True,
    ) -> None:
        self.client = client
        self.stream_id = stream_id
        self.status = status
        self._stream = stream
        self._decoder = MapFrameDecoder()
        self._pending: list[bytes] = []  # split off, not yet returned by next()
        self.raw = bytearray()  # every body byte received, for framing checks
        self._keep_raw = keep_raw
        self.ended = False
        self._read = False  # by next()

    async def next(
        self, timeout: float | None = 5.0, *, keepalives: bool = False
    ) -> dict[str, Any]:
        """The next message (skipping keep-alives unless asked); raises at the end of the stream.

        `timeout` None waits as long as the stream lives.
        """
        self._read = True
        while True:
            while self._pending:
                msg: dict[str, Any] = decode_json(self._pending.pop(0))
                if keepalives or not msg.get("KeepAlive"):
                    return msg
            if self.ended:
                raise EOFError("map stream ended")
            chunk = await asyncio.wait_for(self._stream.chunks.get(), timeout)
            if chunk is None:
                self.ended = True
                continue
            self._pending += self._split(chunk)

    def _split(self, chunk: bytes) -> list[bytes]:
        if self._keep_raw:
            self.raw += chunk
        return self._decoder.receive_data(chunk)

    def listen(self, on_message: Callable[[bytes], None], on_end: Callable[[str], None]) -> None:
        """From now on, each message, framed (length prefix and zstd, as it
        came; keep-alives too), goes to `on_message` as the client's read loop
        receives it; `on_end` gets why the stream ended, once. What arrived
        before is handed over first. Not for a stream `next()` has read."""
        if self._read:
            raise RuntimeError("a map stream read with next() cannot be listened to")
        splitter = MessageSplitter()

        def feed(chunk: bytes | None) -> None:
            if self.ended:
                return
            try:
                if chunk is None:
                    raise EOFError("map stream ended")
                if self._keep_raw:
                    self.raw += chunk
                for message in splitter.receive_data(chunk):
                    on_message(message)
            except (EOFError, MapFrameError, ValueError) as exc:
                self.ended = True  # and what still comes is dropped, not queued for no one
                on_end(str(exc) or type(exc).__name__)

        self._stream.sink = feed
        while not self._stream.chunks.empty() and not self.ended:
            feed(self._stream.chunks.get_nowait())

    async def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 5.0
    ) -> dict[str, Any]:
        """The first message matching `predicate`; others are dropped."""

        async def find() -> dict[str, Any]:
            while not predicate(msg := await self.next(timeout)):
                pass
            return msg

        return await asyncio.wait_for(find(), timeout)

    async def body(self, timeout: float = 5.0) -> bytes:
        """The rest of the body (for responses that end)."""
        while not self.ended:
            chunk = await asyncio.wait_for(self._stream.chunks.get(), timeout)
            if chunk is None:
                self.ended = True
            else:
                self.raw += chunk
        return bytes(self.raw)

    def cancel(self) -> None:
        self.client.cancel(self.stream_id)

    def __aiter__(self) -> MapStream:
        return self

    async def __anext__(self) -> dict[str, Any]:
        try:
            return await self.next()
        except EOFError:
            raise StopAsyncIteration from None
