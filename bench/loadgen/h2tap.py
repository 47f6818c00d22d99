"""The DATA frames of a client's long-lived streams, read without h2.

h2 spends ~10 µs of pure Python per received frame (the frame object, its
`repr` for a trace log nobody reads, the stream state machine, two window
managers); a simulated client in a 1,000-node mesh receives a frame for every
join. Once a map stream's response headers are in, its DATA frames carry
nothing but body bytes: `DataTap` takes those frames out of the byte stream
and hands every other frame, in order and untouched, to h2, which still
answers PING and SETTINGS, ends and resets streams, and handles the other
streams' bodies.

A tapped frame is flow-controlled here as h2 would do it (h2's own
`WindowManager`, so WINDOW_UPDATEs go out at the same points): the server's
window for the stream and for the connection is handed back as the client
acknowledges what it read. The connection window is checked only against the
tapped frames' share of it; h2 checks the rest.

Sans-IO: bytes in (`receive_data`), WINDOW_UPDATE frames out (`data_to_send`).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

from h2.exceptions import FlowControlError
from h2.windows import WindowManager

__all__ = [
    "DEFAULT_WINDOW",
    "MAX_FRAME",
    "DataTap",
    "ForH2",
    "StreamData",
    "TapError",
    "window_update",
]

# RFC 9113 §6.5.2: SETTINGS_INITIAL_WINDOW_SIZE and SETTINGS_MAX_FRAME_SIZE
# until a client says otherwise (h2's client sends neither by default).
DEFAULT_WINDOW = 65535
MAX_FRAME = 16384
_HEADER = struct.Struct(">BHBBL")  # 24-bit length as 8 + 16 bits, type, flags, stream
_HEADER_LEN = _HEADER.size
_DATA, _HEADERS, _RST_STREAM, _WINDOW_UPDATE, _CONTINUATION = 0x0, 0x1, 0x3, 0x8, 0x9
_END_STREAM, _PADDED = 0x1, 0x8
_STREAM_MASK = 0x7FFFFFFF


class TapError(Exception):
    """The server broke HTTP/2 on a tapped stream: the connection is done."""


@dataclass(frozen=True, slots=True)
class ForH2:
    """Whole frames the tap does not take, for h2 as they came."""

    data: bytes


@dataclass(frozen=True, slots=True)
class StreamData:
    """A tapped DATA frame's body; `flow_controlled` counts its padding too."""

    stream_id: int
    data: bytes
    flow_controlled: int


def window_update(stream_id: int, increment: int) -> bytes:
    return _HEADER.pack(0, 4, _WINDOW_UPDATE, 0, stream_id) + increment.to_bytes(4, "big")


class DataTap:
    """Splits the server's HTTP/2 frames: the followed streams' DATA, and the rest."""

    def __init__(
        self,
        *,
        stream_window: int = DEFAULT_WINDOW,
        connection_window: int = DEFAULT_WINDOW,
        max_frame: int = MAX_FRAME,
    ) -> None:
        self._stream_window = stream_window
        self._max_frame = max_frame
        self._connection = WindowManager(connection_window)
        self._streams: dict[int, WindowManager] = {}
        self._buffer = bytearray()
        self._outbound = bytearray()

    def follow(self, stream_id: int) -> None:
        """Take this stream's DATA frames from now on (its headers have been
        read: h2 has seen none of its body, so its window is still whole)."""
        self._streams[stream_id] = WindowManager(self._stream_window)

    def unfollow(self, stream_id: int) -> None:
        self._streams.pop(stream_id, None)

    def following(self, stream_id: int) -> bool:
        return stream_id in self._streams

    def receive_data(self, data: bytes) -> list[ForH2 | StreamData]:
        """Every whole frame now buffered, in order; a partial one waits."""
        return list(self._split(data, after_headers=False))

    def items(self, data: bytes) -> Iterator[ForH2 | StreamData]:
        """As `receive_data`, one item at a time, and the frames for h2 cut
        after each HEADERS (or CONTINUATION) frame: a stream followed once
        h2 has read its response headers has its DATA frames tapped from the
        next frame on, even in the same read (the server sends a map poll's
        headers with its first map). Else h2 would take those frames and
        keep part of the stream's window, which the tap, starting from a
        whole window, would never give back. Consume it to the end."""
        return self._split(data, after_headers=True)

    def _split(self, data: bytes, *, after_headers: bool) -> Iterator[ForH2 | StreamData]:
        buffer = self._buffer
        buffer += data
        streams = self._streams
        pos = passed = 0  # frames from `passed` to `pos` go to h2 together
        end = len(buffer)
        while end - pos >= _HEADER_LEN:
            high, low, kind, flags, stream_id = _HEADER.unpack_from(buffer, pos)
            length = high << 16 | low
            if length > self._max_frame:  # bounds first: no waiting for a huge frame
                raise TapError(f"a {length}-byte frame; the limit is {self._max_frame}")
            body = pos + _HEADER_LEN
            if end - body < length:
                break
            stream_id &= _STREAM_MASK
            window = streams.get(stream_id)
            if window is None or kind != _DATA or flags & _END_STREAM:
                if window is not None:  # its end or reset: h2 closes the stream
                    if kind == _DATA or kind == _RST_STREAM:
                        del streams[stream_id]
                pos = body + length
                if after_headers and (kind == _HEADERS or kind == _CONTINUATION):
                    yield ForH2(bytes(buffer[passed:pos]))
                    passed = pos
                continue
            if pos > passed:
                yield ForH2(bytes(buffer[passed:pos]))
            yield self._tapped(window, stream_id, flags, buffer, body, length)
            pos = passed = body + length
        if pos > passed:
            yield ForH2(bytes(buffer[passed:pos]))
        del buffer[:pos]

    def _tapped(
        self,
        window: WindowManager,
        stream_id: int,
        flags: int,
        buffer: bytearray,
        body: int,
        length: int,
    ) -> StreamData:
        try:
            window.window_consumed(length)
            self._connection.window_consumed(length)
        except FlowControlError:
            raise TapError(f"stream {stream_id} sent past its flow-control window") from None
        start, stop = body, body + length
        if flags & _PADDED:
            pad = buffer[body] if length else 0
            if length == 0 or pad >= length:  # the pad length byte and the pad
                raise TapError(f"stream {stream_id}: padding longer than its DATA frame")
            start, stop = body + 1, stop - pad
        return StreamData(stream_id, bytes(buffer[start:stop]), length)

    def acknowledge(self, stream_id: int, size: int) -> None:
        """The client has read `size` flow-controlled bytes of a tapped frame:
        WINDOW_UPDATEs where h2's rule says so."""
        increment = self._connection.process_bytes(size)
        if increment:
            self._outbound += window_update(0, increment)
        window = self._streams.get(stream_id)
        if window is not None and (increment := window.process_bytes(size)):
            self._outbound += window_update(stream_id, increment)

    def data_to_send(self) -> bytes:
        out = bytes(self._outbound)
        self._outbound.clear()
        return out
