"""The connection-level half of the control connection's HTTP/2 server
(h2_codec.py): its state that outlives a request (settings, windows, the
streams' table, the HPACK table size owed) and the frames that move it:
SETTINGS, WINDOW_UPDATE, RST_STREAM, PING, GOAWAY, PRIORITY (ignored) and
PUSH_PROMISE (refused). Sans-IO: frames queued as bytes.
"""

from __future__ import annotations

import struct

from server.edge.h2_wire import (
    DEFAULT_TABLE_SIZE,
    DEFAULT_WINDOW,
    MAX_FRAME_SIZE,
    MAX_WINDOW,
    MIN_FRAME_SIZE,
    PING,
    RST_STREAM,
    SETTINGS,
    ConnectionTerminated,
    ErrorCode,
    Event,
    Flag,
    RemoteProtocolError,
    Setting,
    SettingsChanged,
    StreamReset,
    WindowUpdated,
    frame_head,
)

__all__ = ["CodecStream", "ConnectionFrames", "protocol_error"]

STREAM_MASK = 0x7FFFFFFF
U32 = struct.Struct(">L")
TWO_U32 = struct.Struct(">LL")
_SETTING = struct.Struct(">HL")


class CodecStream:
    """A request's stream while either side may still send on it."""

    __slots__ = (
        "content_length",
        "inbound_window",
        "local_open",
        "outbound_flow_control_window",
        "received",
        "remote_open",
    )

    def __init__(self, send_window: int, receive_window: int, content_length: int | None) -> None:
        self.outbound_flow_control_window = send_window
        self.inbound_window = receive_window
        self.content_length = content_length
        self.received = 0
        self.remote_open = True
        self.local_open = True


def protocol_error(message: str, code: ErrorCode = ErrorCode.PROTOCOL_ERROR) -> RemoteProtocolError:
    return RemoteProtocolError(message, code)


def _table_size_update(size: int) -> bytes:
    """RFC 7541 §6.3: a dynamic table size update, its 5-bit prefixed integer."""
    if size < 31:
        return bytes([0x20 | size])
    out, size = bytearray([0x3F]), size - 31
    while size >= 128:
        out.append((size & 0x7F) | 0x80)
        size >>= 7
    out.append(size)
    return bytes(out)


class ConnectionFrames:
    def __init__(self) -> None:
        self.streams: dict[int, CodecStream] = {}
        self.outbound_flow_control_window = DEFAULT_WINDOW
        self.max_outbound_frame_size = MIN_FRAME_SIZE
        self.open = True  # False once either side sent GOAWAY
        self._remote_initial_window = DEFAULT_WINDOW
        # Our encoder's table size (we index nothing) and the lowest size
        # since the last block, owed to the client's decoder (RFC 7541 §4.2).
        self._table_size = DEFAULT_TABLE_SIZE
        self._table_low: int | None = None
        self._highest = 0  # the last client stream opened
        self._out = bytearray()

    @property
    def table_update_owed(self) -> bool:
        """The next header block must start with a table size update: it
        may not be reordered after later ones."""
        return self._table_low is not None

    def _take_table_update(self) -> bytes:
        """The table size updates owed, to start the next header block."""
        low = self._table_low
        if low is None:
            return b""
        self._table_low = None
        prefix = _table_size_update(low)
        if self._table_size != low:
            prefix += _table_size_update(self._table_size)
        return prefix

    def _queue(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        self._out += frame_head(len(payload), kind, flags, stream_id)
        self._out += payload

    # -- bytes in ------------------------------------------------------------

    def _idle(self, stream_id: int) -> bool:
        return stream_id > self._highest or stream_id % 2 == 0

    def _refuse(self, stream_id: int, code: ErrorCode, events: list[Event]) -> None:
        """A stream error: RST_STREAM, and the stream forgotten."""
        if self.streams.pop(stream_id, None) is not None:
            events.append(StreamReset(stream_id, code))
        self._queue(RST_STREAM, 0, stream_id, U32.pack(code))

    def _on_rst_stream(
        self, flags: int, stream_id: int, payload: bytes, events: list[Event]
    ) -> None:
        if len(payload) != 4:
            raise protocol_error("RST_STREAM of a wrong length", ErrorCode.FRAME_SIZE_ERROR)
        if stream_id == 0 or self._idle(stream_id):
            raise protocol_error("RST_STREAM on an idle stream")
        if self.streams.pop(stream_id, None) is not None:
            events.append(StreamReset(stream_id, U32.unpack(payload)[0]))

    def _on_settings(self, flags: int, stream_id: int, payload: bytes, events: list[Event]) -> None:
        if stream_id:
            raise protocol_error("SETTINGS on a stream")
        if flags & Flag.ACK:
            if payload:
                raise protocol_error("SETTINGS ACK with a payload", ErrorCode.FRAME_SIZE_ERROR)
            return
        if len(payload) % _SETTING.size:
            raise protocol_error("SETTINGS of a wrong length", ErrorCode.FRAME_SIZE_ERROR)
        for start in range(0, len(payload), _SETTING.size):
            self._setting(*_SETTING.unpack_from(payload, start))
        self._queue(SETTINGS, Flag.ACK, 0, b"")
        events.append(SettingsChanged())

    def _setting(self, code: int, value: int) -> None:
        if code == Setting.HEADER_TABLE_SIZE:
            size = min(value, DEFAULT_TABLE_SIZE)
            if size != self._table_size or self._table_low is not None:
                low = self._table_low
                self._table_low = size if low is None else min(low, size)
                self._table_size = size
        elif code in (Setting.ENABLE_PUSH, Setting.ENABLE_CONNECT_PROTOCOL):
            if value > 1:
                raise protocol_error("a boolean setting above 1")
        elif code == Setting.INITIAL_WINDOW_SIZE:
            if value > MAX_WINDOW:
                raise protocol_error("initial window too large", ErrorCode.FLOW_CONTROL_ERROR)
            delta, self._remote_initial_window = value - self._remote_initial_window, value
            for stream in self.streams.values():
                stream.outbound_flow_control_window += delta
                if stream.outbound_flow_control_window > MAX_WINDOW:
                    raise protocol_error("a stream window overflows", ErrorCode.FLOW_CONTROL_ERROR)
        elif code == Setting.MAX_FRAME_SIZE:
            if not MIN_FRAME_SIZE <= value <= MAX_FRAME_SIZE:
                raise protocol_error("max frame size out of bounds")
            self.max_outbound_frame_size = value
        # MAX_CONCURRENT_STREAMS, MAX_HEADER_LIST_SIZE: we push nothing, and our
        # header lists are three short fields; unknown settings are ignored.

    def _on_window_update(
        self, flags: int, stream_id: int, payload: bytes, events: list[Event]
    ) -> None:
        if len(payload) != 4:
            raise protocol_error("WINDOW_UPDATE of a wrong length", ErrorCode.FRAME_SIZE_ERROR)
        increment = U32.unpack(payload)[0] & STREAM_MASK
        if stream_id == 0:
            if increment == 0:
                raise protocol_error("WINDOW_UPDATE of zero")
            self.outbound_flow_control_window += increment
            if self.outbound_flow_control_window > MAX_WINDOW:
                raise protocol_error("connection window overflows", ErrorCode.FLOW_CONTROL_ERROR)
            events.append(WindowUpdated(0))
            return
        if self._idle(stream_id):
            raise protocol_error("WINDOW_UPDATE on an idle stream")
        stream = self.streams.get(stream_id)
        if stream is None:
            return  # closed: a late update
        stream.outbound_flow_control_window += increment
        if increment == 0:
            self._refuse(stream_id, ErrorCode.PROTOCOL_ERROR, events)
        elif stream.outbound_flow_control_window > MAX_WINDOW:
            self._refuse(stream_id, ErrorCode.FLOW_CONTROL_ERROR, events)
        else:
            events.append(WindowUpdated(stream_id))

    def _on_ping(self, flags: int, stream_id: int, payload: bytes, events: list[Event]) -> None:
        if stream_id:
            raise protocol_error("PING on a stream")
        if len(payload) != 8:
            raise protocol_error("PING of a wrong length", ErrorCode.FRAME_SIZE_ERROR)
        if not flags & Flag.ACK:
            self._queue(PING, Flag.ACK, 0, payload)

    def _on_goaway(self, flags: int, stream_id: int, payload: bytes, events: list[Event]) -> None:
        if stream_id:
            raise protocol_error("GOAWAY on a stream")
        if len(payload) < 8:
            raise protocol_error("GOAWAY too short", ErrorCode.FRAME_SIZE_ERROR)
        last, code = TWO_U32.unpack_from(payload)
        self.open = False
        events.append(ConnectionTerminated(code, last & STREAM_MASK))

    def _on_priority(self, flags: int, stream_id: int, payload: bytes, events: list[Event]) -> None:
        if stream_id == 0:
            raise protocol_error("PRIORITY on stream 0")
        if len(payload) != 5:
            raise protocol_error("PRIORITY of a wrong length", ErrorCode.FRAME_SIZE_ERROR)

    def _on_push_promise(
        self, flags: int, stream_id: int, payload: bytes, events: list[Event]
    ) -> None:
        raise protocol_error("PUSH_PROMISE from a client")
