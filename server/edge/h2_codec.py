"""The control connection's HTTP/2 server (RFC 9113), sans-IO: bytes in
(`receive_data` -> events), bytes out (`data_to_send`). It does what the
control channel needs and no more: requests with bodies in, responses out
(h2head.py's header blocks, which index nothing), flow control both ways,
client resets, PING and GOAWAY. No server push, no priorities (ignored).

It replaces the `h2` library on the server side, whose state machines,
frame objects and chain of header validators cost ~220 µs a registration
(docs/bench/NOTE-regpath3.md). h2 remains the tests' oracle and the load
generator's client. Errors in what the client sends are `RemoteProtocolError`
after the GOAWAY that reports them is queued; a malformed request is a
stream error (RST_STREAM), never served.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

import hpack

from server.edge.h2_connection_frames import (
    STREAM_MASK,
    TWO_U32,
    U32,
    CodecStream,
    ConnectionFrames,
    protocol_error,
)
from server.edge.h2_request_headers import MalformedHeaders, check_request, check_trailers
from server.edge.h2_wire import (
    CONTINUATION,
    DATA,
    DEFAULT_TABLE_SIZE,
    DEFAULT_WINDOW,
    FRAME_HEAD,
    GOAWAY,
    HEADERS,
    MIN_FRAME_SIZE,
    PING,
    PREFACE,
    PRIORITY,
    PUSH_PROMISE,
    RST_STREAM,
    SETTINGS,
    WINDOW_UPDATE,
    DataReceived,
    ErrorCode,
    Event,
    Flag,
    RemoteProtocolError,
    RequestReceived,
    Setting,
    frame_head,
)

__all__ = ["CodecStream", "ServerCodec"]

MAX_STREAMS = 100
MAX_HEADER_LIST = 1 << 16
_SETTING = struct.Struct(">HL")


class _Entries(list[tuple[bytes, bytes]]):
    """hpack's dynamic table as a list: `deque()` costs ~600 bytes even
    empty, and a control connection's table holds a handful of headers."""

    __slots__ = ()

    def appendleft(self, entry: tuple[bytes, bytes]) -> None:
        self.insert(0, entry)


def _unpad(flags: int, payload: bytes) -> bytes:
    if not flags & Flag.PADDED:
        return payload
    if not payload or payload[0] >= len(payload):
        raise protocol_error("padding longer than the frame")
    return payload[1 : len(payload) - payload[0]]


class ServerCodec(ConnectionFrames):
    def __init__(self, inbound_window: int, *, max_streams: int = MAX_STREAMS) -> None:
        super().__init__()
        self._inbound_window = inbound_window
        self._max_streams = max_streams
        # What the client may still send on the connection, and its most.
        self._receive_window = self._receive_max = DEFAULT_WINDOW
        self._decoder = hpack.Decoder(max_header_list_size=MAX_HEADER_LIST)
        table = self._decoder.header_table
        table.dynamic_entries = _Entries()  # type: ignore[assignment]
        self._want_preface = True
        self._want_settings = True
        self._block: bytearray | None = None  # a header block awaiting CONTINUATION
        self._block_stream = self._block_flags = 0
        self._buffer = bytearray()

    # -- bytes out -----------------------------------------------------------

    def initiate(self) -> None:
        """Our preface: settings, and the connection's window raised to
        match a stream's."""
        settings = (
            (Setting.HEADER_TABLE_SIZE, DEFAULT_TABLE_SIZE),
            (Setting.ENABLE_PUSH, 0),
            (Setting.MAX_CONCURRENT_STREAMS, self._max_streams),
            (Setting.INITIAL_WINDOW_SIZE, self._inbound_window),
            (Setting.MAX_FRAME_SIZE, MIN_FRAME_SIZE),
            (Setting.MAX_HEADER_LIST_SIZE, MAX_HEADER_LIST),
        )
        self._queue(SETTINGS, 0, 0, b"".join(_SETTING.pack(c, v) for c, v in settings))
        self._queue(WINDOW_UPDATE, 0, 0, U32.pack(self._inbound_window))
        self._receive_window += self._inbound_window
        self._receive_max += self._inbound_window

    @property
    def has_data_to_send(self) -> bool:
        return bool(self._out)

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def sendable(self, stream_id: int) -> CodecStream | None:
        """The stream, if it and the connection are open for us to send on."""
        stream = self.streams.get(stream_id)
        if stream is None or not stream.local_open or not self.open:
            return None
        return stream

    def headers_frame(
        self, stream_id: int, stream: CodecStream, block: bytes, *, end: bool
    ) -> bytes:
        """A HEADERS frame carrying `block` (which indexes nothing), on a
        `sendable` stream; `end`: it ends our side of the stream."""
        block = self._take_table_update() + block
        flags = Flag.END_HEADERS
        if end:
            flags |= Flag.END_STREAM
            self.end_local(stream_id, stream)
        return frame_head(len(block), HEADERS, flags, stream_id) + block

    def end_local(self, stream_id: int, stream: CodecStream) -> None:
        """Our side of the stream ended (its last frame made by the caller)."""
        stream.local_open = False
        if not stream.remote_open:
            del self.streams[stream_id]

    def end_stream(self, stream_id: int) -> None:
        """An empty DATA frame ending our side of a `sendable` stream."""
        stream = self.sendable(stream_id)
        if stream is not None:
            self.end_local(stream_id, stream)
            self._queue(DATA, Flag.END_STREAM, stream_id, b"")

    def reset_stream(self, stream_id: int, code: ErrorCode = ErrorCode.CANCEL) -> None:
        """RST_STREAM for a stream not yet closed both ways (else nothing)."""
        if self.streams.pop(stream_id, None) is not None and self.open:
            self._queue(RST_STREAM, 0, stream_id, U32.pack(code))

    def local_window(self, stream_id: int) -> int:
        stream = self.sendable(stream_id)
        if stream is None:
            return 0
        return min(stream.outbound_flow_control_window, self.outbound_flow_control_window)

    def receive_data(self, data: bytes) -> list[Event]:
        """The events of the frames `data` completes. RemoteProtocolError:
        the connection is broken, its GOAWAY queued."""
        events: list[Event] = []
        if not self.open:
            return events
        self._buffer += data
        try:
            self._parse(events)
        except RemoteProtocolError as exc:
            self.open = False
            self._queue(GOAWAY, 0, 0, TWO_U32.pack(self._highest, exc.code))
            self._buffer.clear()
            raise
        return events

    def _parse(self, events: list[Event]) -> None:
        buf, pos = self._buffer, 0
        if self._want_preface:
            if buf[: len(PREFACE)] != PREFACE[: len(buf)]:
                raise protocol_error("not an HTTP/2 preface")
            if len(buf) < len(PREFACE):
                return
            self._want_preface, pos = False, len(PREFACE)
        while len(buf) - pos >= FRAME_HEAD.size and self.open:
            high, low, kind, flags, stream_id = FRAME_HEAD.unpack_from(buf, pos)
            length = high << 8 | low
            if length > MIN_FRAME_SIZE:  # our SETTINGS_MAX_FRAME_SIZE
                raise protocol_error("frame larger than our maximum", ErrorCode.FRAME_SIZE_ERROR)
            end = pos + FRAME_HEAD.size + length
            if end > len(buf):
                break
            payload = bytes(buf[pos + FRAME_HEAD.size : end])
            pos = end
            self._frame(kind, flags, stream_id & STREAM_MASK, payload, events)
        del buf[:pos]

    def _frame(
        self, kind: int, flags: int, stream_id: int, payload: bytes, events: list[Event]
    ) -> None:
        if self._block is not None and kind != CONTINUATION:
            raise protocol_error("a frame inside a header block")
        if self._want_settings:
            if kind != SETTINGS or flags & Flag.ACK:
                raise protocol_error("the preface is not followed by SETTINGS")
            self._want_settings = False
        handler = _HANDLERS.get(kind)
        if handler is not None:  # unknown types are ignored (§5.5)
            handler(self, flags, stream_id, payload, events)

    def _on_data(self, flags: int, stream_id: int, payload: bytes, events: list[Event]) -> None:
        if stream_id == 0:
            raise protocol_error("DATA on stream 0")
        size = len(payload)
        if size > self._receive_window:
            raise protocol_error(
                "DATA beyond the connection's window", ErrorCode.FLOW_CONTROL_ERROR
            )
        self._receive_window -= size
        if self._receive_max - self._receive_window >= self._receive_max // 2:
            self._queue(WINDOW_UPDATE, 0, 0, U32.pack(self._receive_max - self._receive_window))
            self._receive_window = self._receive_max
        data = _unpad(flags, payload)
        stream = self.streams.get(stream_id)
        if stream is None or not stream.remote_open:
            if self._idle(stream_id):
                raise protocol_error("DATA on an idle stream")
            if stream is not None:  # half-closed (remote); else we reset or closed it
                self._refuse(stream_id, ErrorCode.STREAM_CLOSED, events)
            return
        if size > stream.inbound_window:
            raise protocol_error("DATA beyond the stream's window", ErrorCode.FLOW_CONTROL_ERROR)
        stream.inbound_window -= size
        stream.received += len(data)
        ended = bool(flags & Flag.END_STREAM)
        if not self._length_ok(stream, ended):
            self._refuse(stream_id, ErrorCode.PROTOCOL_ERROR, events)
            return
        if ended:
            self._remote_end(stream_id, stream)
        elif stream.inbound_window <= self._inbound_window // 2:
            increment = self._inbound_window - stream.inbound_window
            self._queue(WINDOW_UPDATE, 0, stream_id, U32.pack(increment))
            stream.inbound_window = self._inbound_window
        events.append(DataReceived(stream_id, data, ended))

    @staticmethod
    def _length_ok(stream: CodecStream, ended: bool) -> bool:
        declared = stream.content_length
        if declared is None:
            return True
        return stream.received == declared if ended else stream.received <= declared

    def _remote_end(self, stream_id: int, stream: CodecStream) -> None:
        stream.remote_open = False
        if not stream.local_open:
            del self.streams[stream_id]

    def _on_headers(self, flags: int, stream_id: int, payload: bytes, events: list[Event]) -> None:
        if stream_id == 0:
            raise protocol_error("HEADERS on stream 0")
        fragment = _unpad(flags, payload)
        if flags & Flag.PRIORITY:
            if len(fragment) < 5:
                raise protocol_error(
                    "HEADERS too short for its priority", ErrorCode.FRAME_SIZE_ERROR
                )
            if U32.unpack_from(fragment)[0] & STREAM_MASK == stream_id:
                raise protocol_error("a stream depending on itself")
            fragment = fragment[5:]
        if flags & Flag.END_HEADERS:
            self._header_block(flags, stream_id, fragment, events)
        else:
            self._block, self._block_stream, self._block_flags = (
                bytearray(fragment),
                stream_id,
                flags,
            )

    def _on_continuation(
        self, flags: int, stream_id: int, payload: bytes, events: list[Event]
    ) -> None:
        block = self._block
        if block is None or stream_id != self._block_stream:
            raise protocol_error("CONTINUATION outside a header block")
        block += payload
        if len(block) > MAX_HEADER_LIST:
            raise protocol_error("header block too large", ErrorCode.ENHANCE_YOUR_CALM)
        if flags & Flag.END_HEADERS:
            self._block = None
            self._header_block(self._block_flags, stream_id, bytes(block), events)

    def _header_block(self, flags: int, stream_id: int, block: bytes, events: list[Event]) -> None:
        # Decoded before anything else: the HPACK table must stay in step
        # with the client's even for a block we refuse.
        try:
            headers: list[tuple[bytes, bytes]] = self._decoder.decode(block, raw=True)  # type: ignore[assignment]
        except hpack.OversizedHeaderListError:
            raise protocol_error("header list too large", ErrorCode.ENHANCE_YOUR_CALM) from None
        except hpack.HPACKError:
            raise protocol_error("undecodable header block", ErrorCode.COMPRESSION_ERROR) from None
        ended = bool(flags & Flag.END_STREAM)
        if stream_id % 2 == 0:
            raise protocol_error("a client stream with an even id")
        stream = self.streams.get(stream_id)
        if stream is not None:
            self._trailers(stream_id, stream, headers, ended, events)
        elif stream_id <= self._highest:
            self._queue(RST_STREAM, 0, stream_id, U32.pack(ErrorCode.STREAM_CLOSED))
        else:
            self._highest = stream_id
            self._request(stream_id, headers, ended, events)

    def _request(
        self, stream_id: int, headers: list[tuple[bytes, bytes]], ended: bool, events: list[Event]
    ) -> None:
        if len(self.streams) >= self._max_streams:
            self._refuse(stream_id, ErrorCode.REFUSED_STREAM, events)
            return
        try:
            head = check_request(headers)
        except MalformedHeaders:
            self._refuse(stream_id, ErrorCode.PROTOCOL_ERROR, events)
            return
        if ended and head.content_length not in (None, 0):
            self._refuse(stream_id, ErrorCode.PROTOCOL_ERROR, events)
            return
        stream = CodecStream(self._remote_initial_window, self._inbound_window, head.content_length)
        self.streams[stream_id] = stream
        if ended:
            stream.remote_open = False
        events.append(RequestReceived(stream_id, head.headers, ended))

    def _trailers(
        self,
        stream_id: int,
        stream: CodecStream,
        headers: list[tuple[bytes, bytes]],
        ended: bool,
        events: list[Event],
    ) -> None:
        if not stream.remote_open:
            self._refuse(stream_id, ErrorCode.STREAM_CLOSED, events)
            return
        if not ended:
            raise protocol_error("trailers without END_STREAM")
        try:
            check_trailers(headers)
        except MalformedHeaders:
            self._refuse(stream_id, ErrorCode.PROTOCOL_ERROR, events)
            return
        if not self._length_ok(stream, True):
            self._refuse(stream_id, ErrorCode.PROTOCOL_ERROR, events)
            return
        self._remote_end(stream_id, stream)
        events.append(DataReceived(stream_id, b"", True))


_Handler = Callable[[ServerCodec, int, int, bytes, list[Event]], None]
_HANDLERS: dict[int, _Handler] = {
    DATA: ServerCodec._on_data,
    HEADERS: ServerCodec._on_headers,
    PRIORITY: ServerCodec._on_priority,
    RST_STREAM: ServerCodec._on_rst_stream,
    SETTINGS: ServerCodec._on_settings,
    PUSH_PROMISE: ServerCodec._on_push_promise,
    PING: ServerCodec._on_ping,
    GOAWAY: ServerCodec._on_goaway,
    WINDOW_UPDATE: ServerCodec._on_window_update,
    CONTINUATION: ServerCodec._on_continuation,
}
