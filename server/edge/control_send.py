"""The sending half of the control connection (control_conn.py): DATA and
HEADERS frames queued as the windows allow, and what a turn of the event
loop queued sealed and written at once. A mixin of `ControlConnection`, not
a member object, so that the per-frame calls stay what they were, with no
further attribute hop.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from server.edge.control_types import ControlResponse
from server.edge.h2_codec import ServerCodec
from server.edge.h2_frames import (
    DATA,
    FRAME_HEAD,
    frame_data,
    headers_frame,
    sendable,
)
from server.protocol.noise import NoiseTransport

__all__ = ["ControlSends"]


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


class ControlSends:
    """`ControlConnection` sets these in its __init__."""

    _writer: asyncio.StreamWriter
    _transport: asyncio.WriteTransport
    _high_water: int
    _noise: NoiseTransport
    _h2: ServerCodec
    _window_changed: asyncio.Event | None
    _closed: bool
    _flush_due: bool
    _out: bytearray

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
