"""The control channel: HTTP/2 (h2c, prior knowledge) inside a Noise transport.

Stacks three machines as aioquic stacks H3 on QUIC: the Noise transport
(sans-IO, server/protocol/noise.py) carries bytes for our HTTP/2 server
codec (sans-IO, h2_codec.py), whose complete requests go to a handler. This module only pumps
bytes and schedules per-stream tasks: concurrent streams, flow control both
ways, and client stream resets (the client cancels long polls with
RST_STREAM(CANCEL)) are handled here; what a request means is the handler's.
The response frames are made in h2_frames.py and queued and written by
control_send.py; the request and response values are in control_types.py.
"""

from __future__ import annotations

import asyncio
import logging
from functools import partial
from typing import Literal

from server.edge.control_send import ControlSends, _Stream, _StreamGone
from server.edge.control_types import AnswerNow, ControlRequest, ControlResponse, Handler
from server.edge.h2_codec import ServerCodec
from server.edge.h2_frames import (
    whole_response,
)
from server.edge.h2_wire import (
    ConnectionTerminated,
    DataReceived,
    ErrorCode,
    Event,
    RemoteProtocolError,
    RequestReceived,
    StreamReset,
)
from server.protocol.noise import Accepted, NoiseError

__all__ = ["ControlConnection", "ControlRequest", "ControlResponse", "Handler"]

MAX_REQUEST_BODY = 4 * 1024 * 1024
READ_SIZE = 65536
# Longest a streaming response's headers wait to leave with its first chunk (seconds).
HEADERS_HOLD = 0.5
# Our receive window for request bodies; register/map requests are a few KiB.
INBOUND_WINDOW = 1 << 20


class ControlConnection(ControlSends):
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        accepted: Accepted,
        handler: Handler,
        *,
        log: logging.Logger,
        early_payload: bytes | None = None,
        answer_now: AnswerNow | None = None,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._transport = writer.transport
        # Above this many bytes buffered, drain() waits (the transport paused us).
        self._high_water = self._transport.get_write_buffer_limits()[1]
        self._noise = accepted.transport
        self._machine_key = accepted.machine_key
        self._version = accepted.version
        self._accepted: Accepted | None = accepted  # dropped once the upgrade is answered
        self._handler = handler
        self._answer_now = answer_now
        self._log = log
        self._early = early_payload
        self._h2 = ServerCodec(INBOUND_WINDOW)
        self._streams: dict[int, _Stream] = {}
        # Created only while a stream waits for the client's window: an idle
        # connection holds no Event (and no deque of waiters).
        self._window_changed: asyncio.Event | None = None
        self._closed = False
        self._flush_due = False  # a write of what the codec and Noise hold is scheduled
        self._out = bytearray()  # frames queued, in order: the codec's and the responses'

    async def run(self) -> None:
        # The upgrade, the handshake response, the early payload and our HTTP/2
        # preface leave in one write (a reconnect storm is thousands of these).
        if self._early is not None:
            self._noise.send(self._early)
        self._h2.initiate()
        self._noise.send(self._h2.data_to_send())
        assert self._accepted is not None
        self._writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\n"
            b"Upgrade: tailscale-control-protocol\r\n"
            b"Connection: upgrade\r\n\r\n" + self._accepted.response + self._noise.data_to_send()
        )
        # A streaming connection lives for days: keep nothing of the handshake.
        self._accepted = self._early = None
        await self._writer.drain()
        try:
            await self._read_loop()
        finally:
            self._closed = True
            tasks = [s.task for s in self._streams.values() if s.task is not None]
            for task in tasks:
                task.cancel()
            self._window_moved()
            # Let each stream's own clean-up (closing its map session) finish
            # before this connection counts as gone.
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)

    async def _read_loop(self) -> None:
        while True:
            data = await self._reader.read(READ_SIZE)
            if not data:
                return
            # Taken in a call of its own: between reads (hours, on a map
            # stream) nothing of the last read, its records or events is held.
            going = self._receive(data)
            del data
            if going == "drop":
                return
            if going == "close" or self._out or self._h2.has_data_to_send:
                await self._flush()
            else:
                # Nothing to answer (a request's HEADERS before its body, a
                # WINDOW_UPDATE): a write would be a loop turn that sends nothing.
                await self._writer.drain()
            if going == "close":
                return

    def _receive(self, data: bytes) -> Literal["on", "close", "drop"]:
        """Feed what was read through Noise and HTTP/2; "close": send what
        the codec has (its GOAWAY), then close; "drop": close at once (a Noise error)."""
        try:
            plaintexts = self._noise.receive_data(data)
        except NoiseError as exc:
            self._log.info("noise: %s: closing connection: %s", self._machine_key.short(), exc)
            return "drop"
        for plain in plaintexts:
            try:
                events = self._h2.receive_data(plain)
            except RemoteProtocolError as exc:
                self._log.info("http2: %s: protocol error: %s", self._machine_key.short(), exc)
                return "close"
            for event in events:
                if not self._on_event(event):
                    return "close"
        return "on"

    def _on_event(self, event: Event) -> bool:
        # The codec returns the window of what it received by itself.
        if isinstance(event, RequestReceived):
            self._streams[event.stream_id] = _Stream(list(event.headers))
            if event.ended:
                self._start(event.stream_id)
        elif isinstance(event, DataReceived):
            stream = self._streams.get(event.stream_id)
            if stream is not None:
                stream.body += event.data
                if len(stream.body) > MAX_REQUEST_BODY:
                    self._reset(event.stream_id)
            if event.ended:
                self._start(event.stream_id)
        elif isinstance(event, StreamReset):
            stream = self._streams.pop(event.stream_id, None)
            if stream is not None:
                stream.closed = True
                if stream.task is not None:
                    stream.task.cancel()
            self._window_moved()
        elif isinstance(event, ConnectionTerminated):
            return False
        else:  # WindowUpdated, SettingsChanged
            self._window_moved()
        return True

    def _start(self, stream_id: int) -> None:
        """Its request to the handler. An answer made at once (`answer_now`:
        an endpoint change's lite map request) is sent in this turn, without
        a task. Requests are handled in the order they came: after one whose
        task has not yet run, this one waits in a task too."""
        stream = self._streams.get(stream_id)
        if stream is None or stream.task is not None:
            return
        send_now = partial(self._send_now, stream_id, stream)
        request = ControlRequest.of(
            stream.headers, bytes(stream.body), self._machine_key, self._version, send_now
        )
        # A map poll streams for days: hold neither the request's bytes nor its headers.
        stream.headers, stream.body = [], bytearray()
        answer, now = None, self._answer_now
        if now is not None and not any(s.task and not s.handled for s in self._streams.values()):
            try:
                answer = now(request)
            except Exception:
                self._streams.pop(stream_id, None)
                self._failed(stream_id, stream, request.method, request.path)
                return
            gone = stream.closed or self._closed
            if answer is not None and not gone:
                if whole_response(self._h2, stream_id, answer, self._out):
                    self._streams.pop(stream_id, None)
                    self._write_soon()
                    return
        # An answer made but not sent (its body waits for window) goes to the task.
        stream.handled = answer is not None
        serve = self._serve_stream(stream_id, stream, request, answer)
        stream.task = asyncio.get_running_loop().create_task(serve)

    def _reset(self, stream_id: int) -> None:
        stream = self._streams.pop(stream_id, None)
        if stream is not None:
            stream.closed = True
            if stream.task is not None:
                stream.task.cancel()
        self._h2.reset_stream(stream_id)

    async def _serve_stream(
        self,
        stream_id: int,
        stream: _Stream,
        request: ControlRequest,
        answer: ControlResponse | None = None,
    ) -> None:
        """`answer`: the response `answer_now` made, None: the handler's."""
        method, path = request.method, request.path
        try:
            if answer is None:
                stream.handled = True
                answer = await self._handler(request)
            del request
            await self._respond(stream_id, stream, answer)
        except (_StreamGone, asyncio.CancelledError, ConnectionError):
            pass
        except Exception:
            self._failed(stream_id, stream, method, path)
        finally:
            if self._streams.get(stream_id) is stream:
                del self._streams[stream_id]

    def _failed(self, stream_id: int, stream: _Stream, method: str, path: str) -> None:
        """The handler raised: logged, and only its stream is reset."""
        self._log.exception("control: %s %s failed", method, path)
        if not stream.closed and not self._closed:
            self._h2.reset_stream(stream_id, ErrorCode.INTERNAL_ERROR)
            self._write_soon()

    async def _respond(self, stream_id: int, stream: _Stream, response: ControlResponse) -> None:
        self._check(stream)
        # An empty body (a lite map request's answer) ends the stream on HEADERS.
        ends = response.stream is None and not response.body
        self._queue_headers(stream_id, stream, response, end=ends)
        if response.stream is None:  # headers and body in one write
            if response.body:
                await self._send_data(stream_id, stream, response.body, end=True)
            else:
                await self._flush()
            return
        # The headers wait for the first message (a map poll's first map, as
        # soon as its join is compiled in) and leave with it in one write: a
        # send each side fewer per registration. They leave alone after
        # HEADERS_HOLD, which only tells the client that its poll was taken.
        hold = asyncio.get_running_loop().call_later(
            HEADERS_HOLD, self._release_alone, stream_id, stream
        )
        try:
            async for chunk in response.stream:
                hold.cancel()
                await self._send_data(stream_id, stream, chunk, end=False)
                del chunk  # a map stream idles between messages: hold none of them
        finally:
            hold.cancel()
            aclose = getattr(response.stream, "aclose", None)
            if aclose is not None:
                await aclose()
        await self._send_data(stream_id, stream, b"", end=True)
