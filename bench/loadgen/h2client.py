"""The client side of HTTP/2 (RFC 9113) for the load generator, sans-IO:
bytes in (`receive_data` -> events), bytes out (`data_to_send`).

The `h2` library cost the loader ~0.4 ms of every registration (its
connection and stream state machines, frame objects, event objects and
validators for four requests' worth of frames), on the cores the server under
test shares. This codec does what a control client needs: requests with small
bodies out, responses in, flow control both ways, PING, SETTINGS, RST_STREAM
and GOAWAY. The bytes it sends are the ones h2 sent: the preface and SETTINGS
are h2's own (made once by h2), header blocks come from the same HPACK
encoder, and WINDOW_UPDATEs come from h2's `WindowManager` at the same points
(tests/unit/test_loadgen_h2client.py drives both against one server).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import cache
from typing import Any

import h2.config
import h2.connection
import h2.settings
from h2.windows import WindowManager

from bench.loadgen.hpack_cache import CachingDecoder, CachingEncoder
from server.edge.h2_wire import (
    CONTINUATION,
    DATA,
    DEFAULT_WINDOW,
    GOAWAY,
    HEADERS,
    MAX_FRAME_SIZE,
    MAX_WINDOW,
    MIN_FRAME_SIZE,
    PING,
    PUSH_PROMISE,
    RST_STREAM,
    SETTINGS,
    WINDOW_UPDATE,
    Flag,
    Setting,
    frame_head,
)

__all__ = [
    "ClientCodec",
    "ConnectionEnded",
    "DataReceived",
    "H2ClientError",
    "PingAcked",
    "ResponseReceived",
    "StreamEnded",
    "StreamReset",
    "WindowOpened",
]

_HEAD = struct.Struct(">BHBBL")  # 24-bit length as 8 + 16 bits, type, flags, stream
_U32 = struct.Struct(">L")
_SETTING = struct.Struct(">HL")
_STREAM_MASK = 0x7FFFFFFF
MAX_HEADER_LIST = 1 << 16  # h2's default, which the loader's clients announced


class H2ClientError(Exception):
    """The server broke HTTP/2: the connection is done."""


@dataclass(frozen=True, slots=True)
class ResponseReceived:
    stream_id: int
    headers: dict[str, str]


@dataclass(frozen=True, slots=True)
class DataReceived:
    stream_id: int
    data: bytes
    flow_controlled: int


@dataclass(frozen=True, slots=True)
class StreamEnded:
    stream_id: int


@dataclass(frozen=True, slots=True)
class StreamReset:
    stream_id: int
    code: int


@dataclass(frozen=True, slots=True)
class PingAcked:
    payload: bytes


@dataclass(frozen=True, slots=True)
class WindowOpened:
    """The server let more body bytes out (a WINDOW_UPDATE or new settings)."""


@dataclass(frozen=True, slots=True)
class ConnectionEnded:
    code: int


Event = (
    ResponseReceived
    | DataReceived
    | StreamEnded
    | StreamReset
    | PingAcked
    | WindowOpened
    | ConnectionEnded
)


@cache
def opening(window: int | None) -> bytes:
    """The preface and SETTINGS h2's client sends with these settings."""
    config = h2.config.H2Configuration(client_side=True)
    conn = h2.connection.H2Connection(config=config)
    settings: dict[h2.settings.SettingCodes, int] = {h2.settings.SettingCodes.ENABLE_PUSH: 0}
    if window is not None:
        settings[h2.settings.SettingCodes.INITIAL_WINDOW_SIZE] = window
    conn.local_settings = h2.settings.Settings(client=True, initial_values=settings)
    conn.initiate_connection()
    return conn.data_to_send()


class _Stream:
    __slots__ = ("inbound", "outbound_window", "responded")

    def __init__(self, send_window: int, receive_window: int) -> None:
        self.outbound_window = send_window
        self.inbound = WindowManager(receive_window)
        self.responded = False


class ClientCodec:
    """One HTTP/2 connection's client end."""

    def __init__(self, *, window: int | None = None) -> None:
        self.encoder = CachingEncoder()
        self.decoder = CachingDecoder()
        self.decoder.max_header_list_size = MAX_HEADER_LIST
        self.streams: dict[int, _Stream] = {}
        self.max_outbound_frame_size = MIN_FRAME_SIZE
        self._window = window
        self._receive_window = window if window is not None else DEFAULT_WINDOW
        self._send_window = DEFAULT_WINDOW  # the server's initial, until it says
        self._outbound = DEFAULT_WINDOW  # the connection's, towards the server
        self._inbound = WindowManager(DEFAULT_WINDOW)
        self._next_id = 1
        self._buffer = bytearray()
        self._block: tuple[int, int, bytearray] | None = None  # HEADERS awaiting CONTINUATION
        self._out = bytearray()

    def initiate(self) -> None:
        self._out += opening(self._window)

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    # -- requests ----------------------------------------------------------

    def next_stream_id(self) -> int:
        return self._next_id

    def send_headers(
        self, stream_id: int, headers: list[tuple[str, str]], end_stream: bool
    ) -> None:
        """Open `stream_id` (the next one) with a request head."""
        if stream_id != self._next_id:
            raise ValueError(f"stream {stream_id} is not the next one ({self._next_id})")
        self._next_id += 2
        self.streams[stream_id] = _Stream(self._send_window, self._receive_window)
        block = self.encoder.encode(headers)
        size = self.max_outbound_frame_size
        first, rest = block[:size], block[size:]
        flags = (Flag.END_STREAM if end_stream else 0) | (0 if rest else Flag.END_HEADERS)
        self._frame(HEADERS, flags, stream_id, first)
        while rest:
            chunk, rest = rest[:size], rest[size:]
            self._frame(CONTINUATION, 0 if rest else Flag.END_HEADERS, stream_id, chunk)

    def flow_control_window(self, stream_id: int) -> int:
        """Body bytes the server lets out now on `stream_id`."""
        return min(self._outbound, self.streams[stream_id].outbound_window)

    def send_data(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        if len(data) > min(self.flow_control_window(stream_id), self.max_outbound_frame_size):
            raise ValueError("DATA over the window or the frame size")
        self._outbound -= len(data)
        self.streams[stream_id].outbound_window -= len(data)
        self._frame(DATA, Flag.END_STREAM if end_stream else 0, stream_id, data)

    def reset(self, stream_id: int, code: int) -> None:
        self.streams.pop(stream_id, None)
        self._frame(RST_STREAM, 0, stream_id, _U32.pack(code))

    def ping(self, payload: bytes) -> None:
        self._frame(PING, 0, 0, payload)

    def acknowledge(self, stream_id: int, size: int) -> None:
        """`size` flow-controlled bytes of `stream_id` read: windows handed back
        as h2's `acknowledge_received_data` does (connection first)."""
        increment = self._inbound.process_bytes(size)
        if increment:
            self._frame(WINDOW_UPDATE, 0, 0, _U32.pack(increment))
        stream = self.streams.get(stream_id)
        if stream is not None:
            increment = stream.inbound.process_bytes(size)
            if increment:
                self._frame(WINDOW_UPDATE, 0, stream_id, _U32.pack(increment))

    def _frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        self._out += frame_head(len(payload), kind, flags, stream_id)
        self._out += payload

    # -- responses ---------------------------------------------------------

    def receive_data(self, data: bytes) -> list[Event]:
        buffer = self._buffer
        buffer += data
        events: list[Event] = []
        pos, end = 0, len(buffer)
        while end - pos >= 9:
            high, low, kind, flags, stream_id = _HEAD.unpack_from(buffer, pos)
            length = high << 16 | low
            if length > MIN_FRAME_SIZE:  # we never raise SETTINGS_MAX_FRAME_SIZE
                raise H2ClientError(f"a frame of {length} bytes; the limit is {MIN_FRAME_SIZE}")
            if end - pos - 9 < length:
                break
            payload = bytes(buffer[pos + 9 : pos + 9 + length])
            pos += 9 + length
            self._on_frame(kind, flags, stream_id & _STREAM_MASK, payload, events)
        del buffer[:pos]
        return events

    def _on_frame(
        self, kind: int, flags: int, stream_id: int, payload: bytes, events: list[Event]
    ) -> None:
        if self._block is not None and kind != CONTINUATION:
            raise H2ClientError("a header block interrupted")
        if kind == DATA:
            self._on_data(flags, stream_id, payload, events)
        elif kind == HEADERS:
            if flags & Flag.PADDED:
                payload = _unpad(payload)
            if flags & Flag.PRIORITY:
                payload = payload[5:]
            self._block = (stream_id, flags, bytearray(payload))
            if flags & Flag.END_HEADERS:
                self._end_block(events)
        elif kind == CONTINUATION:
            if self._block is None or self._block[0] != stream_id:
                raise H2ClientError("CONTINUATION without its HEADERS")
            self._block[2].extend(payload)
            if flags & Flag.END_HEADERS:
                self._end_block(events)
        elif kind == SETTINGS:
            self._on_settings(flags, stream_id, payload, events)
        elif kind == WINDOW_UPDATE:
            self._on_window_update(stream_id, payload, events)
        elif kind == PING:
            if stream_id or len(payload) != 8:
                raise H2ClientError("a malformed PING")
            if flags & Flag.ACK:
                events.append(PingAcked(payload))
            else:
                self._frame(PING, Flag.ACK, 0, payload)
        elif kind == RST_STREAM:
            if len(payload) != 4 or not stream_id:
                raise H2ClientError("a malformed RST_STREAM")
            if self.streams.pop(stream_id, None) is not None:
                events.append(StreamReset(stream_id, _U32.unpack(payload)[0]))
        elif kind == GOAWAY:
            if len(payload) < 8:
                raise H2ClientError("a malformed GOAWAY")
            events.append(ConnectionEnded(_U32.unpack_from(payload, 4)[0]))
        elif kind == PUSH_PROMISE:
            raise H2ClientError("PUSH_PROMISE, though push is disabled")
        # PRIORITY and unknown frame types are ignored (RFC 9113 §5.5).

    def _on_data(self, flags: int, stream_id: int, payload: bytes, events: list[Event]) -> None:
        flow_controlled = len(payload)
        if flags & Flag.PADDED:
            payload = _unpad(payload)
        try:
            self._inbound.window_consumed(flow_controlled)
        except Exception as exc:  # h2's FlowControlError
            raise H2ClientError("DATA over the connection window") from exc
        stream = self.streams.get(stream_id)
        if stream is None:
            # A stream we reset: its bytes still count against the connection.
            self.acknowledge(stream_id, flow_controlled)
            return
        if not stream.responded:
            raise H2ClientError("DATA before the response head")
        try:
            stream.inbound.window_consumed(flow_controlled)
        except Exception as exc:
            raise H2ClientError("DATA over the stream window") from exc
        events.append(DataReceived(stream_id, payload, flow_controlled))
        if flags & Flag.END_STREAM:
            self._end_stream(stream_id, events)

    def _end_block(self, events: list[Event]) -> None:
        assert self._block is not None
        stream_id, flags, block = self._block
        self._block = None
        try:
            fields: Any = self.decoder.decode(bytes(block), raw=False)
        except Exception as exc:  # hpack's errors: the table is now out of step
            raise H2ClientError("an undecodable header block") from exc
        stream = self.streams.get(stream_id)
        if stream is None:
            return  # a reset stream's late head: decoded only to keep the table
        headers = {str(k): str(v) for k, v in fields}
        if not stream.responded:
            status = headers.get(":status", "")
            if status.startswith("1") and len(status) == 3:
                return  # informational: the real head follows
            stream.responded = True
            events.append(ResponseReceived(stream_id, headers))
        if flags & Flag.END_STREAM:
            self._end_stream(stream_id, events)

    def _end_stream(self, stream_id: int, events: list[Event]) -> None:
        # Our side ended with the request, so the stream is closed.
        self.streams.pop(stream_id, None)
        events.append(StreamEnded(stream_id))

    def _on_settings(self, flags: int, stream_id: int, payload: bytes, events: list[Event]) -> None:
        if stream_id:
            raise H2ClientError("SETTINGS on a stream")
        if flags & Flag.ACK:
            return
        if len(payload) % _SETTING.size:
            raise H2ClientError("SETTINGS of a wrong length")
        for start in range(0, len(payload), _SETTING.size):
            code, value = _SETTING.unpack_from(payload, start)
            if code == Setting.INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise H2ClientError("initial window too large")
                delta, self._send_window = value - self._send_window, value
                for stream in self.streams.values():
                    stream.outbound_window += delta
            elif code == Setting.MAX_FRAME_SIZE:
                if not MIN_FRAME_SIZE <= value <= MAX_FRAME_SIZE:
                    raise H2ClientError("max frame size out of bounds")
                self.max_outbound_frame_size = value
            elif code == Setting.HEADER_TABLE_SIZE:
                self.encoder.header_table_size = value
        self._frame(SETTINGS, Flag.ACK, 0, b"")
        events.append(WindowOpened())

    def _on_window_update(self, stream_id: int, payload: bytes, events: list[Event]) -> None:
        if len(payload) != 4:
            raise H2ClientError("WINDOW_UPDATE of a wrong length")
        increment = _U32.unpack(payload)[0] & _STREAM_MASK
        if stream_id == 0:
            self._outbound += increment
            if not increment or self._outbound > MAX_WINDOW:
                raise H2ClientError("a bad connection WINDOW_UPDATE")
        else:
            stream = self.streams.get(stream_id)
            if stream is None:
                return  # closed: a late update
            stream.outbound_window += increment
        events.append(WindowOpened())


def _unpad(payload: bytes) -> bytes:
    if not payload or payload[0] >= len(payload):
        raise H2ClientError("bad padding")
    return payload[1 : len(payload) - payload[0]]
