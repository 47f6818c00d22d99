"""The control channel: HTTP/2 (h2c, prior knowledge) inside a Noise transport.

Stacks three machines as aioquic stacks H3 on QUIC: the Noise transport
(sans-IO, server/protocol/noise.py) carries bytes for our HTTP/2 server
codec (sans-IO, h2_codec.py), whose complete requests go to a handler. This module only pumps
bytes and schedules per-stream tasks: concurrent streams, flow control both
ways, and client stream resets (the client cancels long polls with
RST_STREAM(CANCEL)) are handled here; what a request means is the handler's.
The response frames are made in h2_frames.py, the request and response
values are in control_types.py.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from functools import partial
from typing import Literal

from server.edge.control_types import AnswerNow, ControlRequest, ControlResponse, Handler
from server.edge.h2_codec import ServerCodec
from server.edge.h2_frames import (
    DATA,
    FRAME_HEAD,
    frame_data,
    headers_frame,
    sendable,
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


class _StreamGone(Exception):
    pass


@dataclass(slots=True)
class _Stream:
    headers: list[tuple[str, str]]
    body: bytearray = field(default_factory=bytearray)
    task: asyncio.Task[None] | None = None
    closed: bool = False
    # A streaming response's HEADERS frame, held back to leave with its first chunk.
    held: bytes = b""
    handled: bool = False  # its request went to the handler (requests go in order)


class ControlConnection:
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

    def _check(self, stream: _Stream) -> None:
        if stream.closed or self._closed:
            raise _StreamGone

    async def _send_data(self, stream_id: int, stream: _Stream, data: bytes, *, end: bool) -> None:
        """As many DATA frames as the window takes, then one write. `end`:
        the last frame ends the stream (an empty one, only if `data` is)."""
        self._release(stream_id, stream)
        view = memoryview(data)
        while view:
            self._check(stream)
            window = self._h2.local_window(stream_id)
            size = min(window, self._h2.max_outbound_frame_size, len(view))
            if size <= 0:
                if sendable(self._h2, stream_id) is None:
                    raise _StreamGone
                # Made before the flush yields: no lost update.
                if self._window_changed is None:
                    self._window_changed = asyncio.Event()
                changed = self._window_changed
                await self._flush()
                await changed.wait()
                continue
            last = size == len(view)
            self._queue_data(stream_id, bytes(view[:size]), end=end and last)
            view = view[size:]
        if end and not data:
            self._check(stream)
            self._h2.end_stream(stream_id)
        await self._flush()

    def _send_now(self, stream_id: int, stream: _Stream, data: bytes) -> bool:
        """`data` queued on the stream in this call, as `_send_data` would,
        when nothing needs waiting for: the stream may send, the windows take
        all of it and the socket is not backed up; it leaves with the turn's
        other frames (`_write_soon`). False: nothing was queued, and the
        stream's task sends it as any chunk (waiting for the window).

        Sealed and written in this call when no write is pending this turn:
        a wave hands one frame to each of a thousand connections, and a
        loop callback per connection to write it later cost as much as the
        write."""
        sending = None if stream.closed or self._closed else sendable(self._h2, stream_id)
        if sending is None:
            return False
        conn, size = self._h2, len(data)
        # the codec's `local_window`, for a stream already looked up
        if size > min(sending.outbound_flow_control_window, conn.outbound_flow_control_window):
            return False
        transport = self._transport
        if transport.is_closing() or transport.get_write_buffer_size() >= self._high_water:
            return False  # drain() would wait: the task waits instead
        most = conn.max_outbound_frame_size
        if size <= most and not self._flush_due and not self._out and not stream.held:
            # A delta, nothing queued before it: one frame, one record, one write
            # (what `frame_data` then `_write_out` do, without their buffer).
            sending.outbound_flow_control_window -= size
            conn.outbound_flow_control_window -= size
            head = conn.data_to_send() + FRAME_HEAD.pack(size >> 8, size & 0xFF, DATA, 0, stream_id)
            transport.write(self._noise.sealed(head + data))
            return True
        self._release(stream_id, stream)
        for start in range(0, size, most):
            frame_data(conn, sending, stream_id, data[start : start + most], self._out)
        if not self._flush_due:  # else it leaves with what this turn queued before it
            self._write_out()
        return True

    def _queue_data(self, stream_id: int, chunk: bytes, *, end: bool = False) -> None:
        """One DATA frame that fits the windows; `end`: it ends the stream."""
        stream = sendable(self._h2, stream_id)
        if stream is None:
            raise _StreamGone
        frame_data(self._h2, stream, stream_id, chunk, self._out, end=end)

    def _queue_headers(
        self, stream_id: int, stream: _Stream, response: ControlResponse, *, end: bool
    ) -> None:
        """The response's HEADERS frame, ending the stream if `end`.

        A streaming response's frame is `held` on its stream, not queued: it
        may leave after frames queued later on other streams, and nothing
        else is sent on its own stream before it (`_release`). One that
        carries a table size update goes in order."""
        length = None if response.stream is not None else len(response.body)
        in_order = response.stream is None or self._h2.table_update_owed
        frame = headers_frame(
            self._h2, stream_id, response.status, response.content_type, length, end=end
        )
        if frame is None:
            raise _StreamGone
        self._out += self._h2.data_to_send()
        if in_order:
            self._out += frame
        else:
            stream.held = frame

    def _release(self, stream_id: int, stream: _Stream) -> None:
        """Queue the stream's held HEADERS, ahead of anything else it sends;
        dropped if the stream can no longer send (reset by either side)."""
        held, stream.held = stream.held, b""
        if held and not stream.closed and sendable(self._h2, stream_id) is not None:
            self._out += held

    def _release_alone(self, stream_id: int, stream: _Stream) -> None:
        if stream.held:
            self._release(stream_id, stream)
            self._write_soon()

    def _window_moved(self) -> None:
        """Wake the streams waiting for window (the event is made afresh by the next wait)."""
        if self._window_changed is not None:
            self._window_changed.set()
            self._window_changed = None

    async def _flush(self) -> None:
        """Send what the codec holds, once per turn of the event loop: frames that
        streams queue in the same turn (every session woken by one change)
        go out in one Noise record batch and one socket write."""
        self._write_soon()
        await self._writer.drain()  # waits only while the socket is backed up

    def _write_soon(self) -> None:
        if not self._flush_due:
            self._flush_due = True
            asyncio.get_running_loop().call_soon(self._write_out)

    def _write_out(self) -> None:
        self._flush_due = False
        data = self._h2.data_to_send()
        if self._out:
            self._out += data
            data = bytes(self._out)
            self._out.clear()
        if data:
            self._noise.send(data)
        out = self._noise.data_to_send()
        if out and not self._writer.is_closing():
            self._writer.write(out)
