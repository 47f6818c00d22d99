"""server/edge/h2_codec.py against h2's client (the oracle the server used
to run on): requests and responses pair up whatever the chunking, flow
control holds both ways, and every way a client can break the protocol
ends in the GOAWAY or RST_STREAM RFC 9113 names."""

from __future__ import annotations

import struct

import h2.config
import h2.connection
import h2.events
import h2.settings
import hpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.edge.h2_codec import ServerCodec
from server.edge.h2_wire import (
    PREFACE,
    DataReceived,
    ErrorCode,
    RemoteProtocolError,
    RequestReceived,
    StreamReset,
    WindowUpdated,
    frame_head,
)
from server.protocol.h2head import response_head

WINDOW = 1 << 20
REQUEST = [
    (":method", "POST"),
    (":scheme", "http"),
    (":authority", "127.0.0.1"),
    (":path", "/machine/map"),
]


def _client(initial: dict[int, int] | None = None) -> h2.connection.H2Connection:
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    if initial:
        client.local_settings = h2.settings.Settings(client=True, initial_values=initial)
    client.initiate_connection()
    return client


def _pair(initial: dict[int, int] | None = None) -> tuple[h2.connection.H2Connection, ServerCodec]:
    client, server = _client(initial), ServerCodec(WINDOW)
    server.initiate()
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())  # our ACK of its settings
    return client, server


def _feed(server: ServerCodec, data: bytes, step: int | None = None) -> list[object]:
    events: list[object] = []
    step = step or len(data) or 1
    for start in range(0, len(data), step):
        events += server.receive_data(data[start : start + step])
    return events


def _deliver(
    client: h2.connection.H2Connection, server: ServerCodec, stream_id: int, body: bytes
) -> bytes:
    """A response as the control connection writes it: HEADERS, then DATA
    frames as the windows allow, the client's updates fed back each round;
    what the client's h2 received of the body."""
    stream = server.sendable(stream_id)
    assert stream is not None
    block = response_head(200, "application/json", len(body))
    out = server.headers_frame(stream_id, stream, block, end=not body)
    received, view = b"", memoryview(body)
    while True:
        for event in client.receive_data(server.data_to_send() + out):
            assert not isinstance(event, h2.events.StreamReset | h2.events.ConnectionTerminated)
            if isinstance(event, h2.events.DataReceived):
                received += event.data or b""
                client.acknowledge_received_data(event.flow_controlled_length, stream_id)
        server.receive_data(client.data_to_send())
        if not view:
            return received
        size = min(server.local_window(stream_id), server.max_outbound_frame_size, len(view))
        assert size > 0, "the client's updates must open the window"
        last = size == len(view)
        stream.outbound_flow_control_window -= size
        server.outbound_flow_control_window -= size
        if last:
            server.end_local(stream_id, stream)
        out = frame_head(size, 0, 1 if last else 0, stream_id) + bytes(view[:size])
        view = view[size:]


def _goaway_code(data: bytes) -> int:
    """The error code of the GOAWAY frame that `data` ends with."""
    assert data[-14] == 0x7, "no GOAWAY"
    return int.from_bytes(data[-4:], "big")


def _broken(server: ServerCodec, data: bytes) -> int:
    with pytest.raises(RemoteProtocolError):
        server.receive_data(data)
    assert not server.open
    return _goaway_code(server.data_to_send())


@given(
    bodies=st.lists(st.binary(max_size=3000), min_size=1, max_size=6),
    step=st.integers(1, 200),
    window=st.integers(1, 70000),
    table=st.sampled_from([None, 0, 100, 4096, 8192]),
)
@settings(max_examples=60, deadline=None)
def test_requests_pair_with_h2s_client_at_any_chunking(
    bodies: list[bytes], step: int, window: int, table: int | None
) -> None:
    initial: dict[int, int] = {h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window}
    if table is not None:
        initial[h2.settings.SettingCodes.HEADER_TABLE_SIZE] = table
    client, server = _pair(initial)
    for n, body in enumerate(bodies):
        stream_id = 2 * n + 1
        client.send_headers(stream_id, [*REQUEST, ("content-length", str(len(body)))])
        client.send_data(stream_id, body, end_stream=True)
    events = _feed(server, client.data_to_send(), step)
    requests = [e for e in events if isinstance(e, RequestReceived)]
    assert [e.stream_id for e in requests] == [2 * n + 1 for n in range(len(bodies))]
    received = {e.stream_id: b"" for e in requests}
    for e in events:
        if isinstance(e, DataReceived):
            received[e.stream_id] += e.data
    assert list(received.values()) == bodies
    for n, body in enumerate(bodies):
        assert _deliver(client, server, 2 * n + 1, body[::-1]) == body[::-1]
    assert not server.streams


def test_fed_whole_byte_at_a_time_and_with_trailing_bytes() -> None:
    for step in (None, 1, 7):
        client, server = _client(), ServerCodec(WINDOW)
        server.initiate()
        client.send_headers(1, [*REQUEST, ("content-length", "2")])
        client.send_data(1, b"hi", end_stream=True)
        wire = client.data_to_send()
        events = _feed(server, wire + frame_head(8, 0x6, 0, 0)[:5], step)
        assert [type(e).__name__ for e in events] == [
            "SettingsChanged",
            "RequestReceived",
            "DataReceived",
        ]


def test_ping_is_answered_and_unknown_and_priority_frames_ignored() -> None:
    client, server = _pair()
    server.data_to_send()
    client.ping(b"12345678")
    events = server.receive_data(
        client.data_to_send()
        + frame_head(3, 0xEE, 0, 0)
        + b"abc"
        + frame_head(5, 0x2, 0, 3)
        + b"\x00\x00\x00\x01\x10"
    )
    assert events == []
    acks = [
        e
        for e in client.receive_data(server.data_to_send())
        if isinstance(e, h2.events.PingAckReceived)
    ]
    assert [a.ping_data for a in acks] == [b"12345678"]


def test_continuation_completes_a_header_block() -> None:
    client, server = _pair()
    block = hpack.Encoder().encode([*REQUEST, ("x-long", "v" * 100)])
    events = server.receive_data(
        frame_head(10, 0x1, 0x1, 1)
        + block[:10]
        + frame_head(len(block) - 10, 0x9, 0x4, 1)
        + block[10:]
    )
    assert [e for e in events if isinstance(e, RequestReceived)][0].headers[-1] == (
        "x-long",
        "v" * 100,
    )


def test_padded_headers_with_priority_and_padded_data() -> None:
    client, server = _pair()
    block = hpack.Encoder().encode([*REQUEST, ("content-length", "3")])
    headers = bytes([4]) + b"\x00\x00\x00\x00\x10" + block + b"\x00" * 4
    data = bytes([2]) + b"abc" + b"\x00\x00"
    events = server.receive_data(
        frame_head(len(headers), 0x1, 0x4 | 0x8 | 0x20, 1)
        + headers
        + frame_head(len(data), 0x0, 0x9, 1)
        + data
    )
    assert [e for e in events if isinstance(e, DataReceived)] == [DataReceived(1, b"abc", True)]


def _started() -> ServerCodec:
    server = ServerCodec(WINDOW)
    server.initiate()
    server.receive_data(PREFACE + frame_head(0, 0x4, 0, 0))
    server.data_to_send()
    return server


def _headers(stream_id: int, extra: list[tuple[str, str]] | None = None, flags: int = 0x4) -> bytes:
    block = hpack.Encoder().encode([*REQUEST, *(extra or [])])
    return frame_head(len(block), 0x1, flags, stream_id) + block


U32 = struct.Struct(">L")


@pytest.mark.parametrize(
    ("wire", "code"),
    [
        (b"GET / HTTP/1.1\r\n\r\n" + b"x" * 10, ErrorCode.PROTOCOL_ERROR),
        (PREFACE + frame_head(0, 0x6, 0, 0), ErrorCode.PROTOCOL_ERROR),  # not SETTINGS first
        (PREFACE + frame_head(5, 0x4, 0, 0) + b"\x00" * 5, ErrorCode.FRAME_SIZE_ERROR),
        (
            PREFACE + frame_head(6, 0x4, 0, 0) + b"\x00\x04\x80\x00\x00\x00",
            ErrorCode.FLOW_CONTROL_ERROR,
        ),
        (
            PREFACE + frame_head(6, 0x4, 0, 0) + b"\x00\x05\x00\x00\x10\x00",
            ErrorCode.PROTOCOL_ERROR,
        ),
        (
            PREFACE + frame_head(6, 0x4, 0, 0) + b"\x00\x02\x00\x00\x00\x02",
            ErrorCode.PROTOCOL_ERROR,
        ),
        (PREFACE + frame_head(1 << 14 | 1, 0x4, 0, 0), ErrorCode.FRAME_SIZE_ERROR),
    ],
)
def test_a_broken_preface_or_settings_ends_the_connection(wire: bytes, code: ErrorCode) -> None:
    server = ServerCodec(WINDOW)
    server.initiate()
    server.data_to_send()
    assert _broken(server, wire) == code


@pytest.mark.parametrize(
    ("wire", "code"),
    [
        (frame_head(4, 0x8, 0, 0) + U32.pack(0), ErrorCode.PROTOCOL_ERROR),  # zero increment
        (frame_head(4, 0x8, 0, 0) + U32.pack((1 << 31) - 1), ErrorCode.FLOW_CONTROL_ERROR),
        (frame_head(3, 0x8, 0, 0) + b"\x00" * 3, ErrorCode.FRAME_SIZE_ERROR),
        (frame_head(4, 0x8, 0, 5) + U32.pack(1), ErrorCode.PROTOCOL_ERROR),  # idle stream
        (frame_head(2, 0x0, 0, 0) + b"ab", ErrorCode.PROTOCOL_ERROR),  # DATA on stream 0
        (frame_head(2, 0x0, 0, 3) + b"ab", ErrorCode.PROTOCOL_ERROR),  # DATA, idle stream
        (frame_head(4, 0x5, 0x4, 1) + U32.pack(2), ErrorCode.PROTOCOL_ERROR),  # PUSH_PROMISE
        (frame_head(7, 0x6, 0, 0) + b"\x00" * 7, ErrorCode.FRAME_SIZE_ERROR),  # PING
        (frame_head(8, 0x6, 0, 1) + b"\x00" * 8, ErrorCode.PROTOCOL_ERROR),
        (frame_head(4, 0x3, 0, 7) + U32.pack(8), ErrorCode.PROTOCOL_ERROR),  # RST, idle
        (frame_head(4, 0x3, 0, 0) + U32.pack(8), ErrorCode.PROTOCOL_ERROR),
        (frame_head(4, 0x2, 0, 1) + b"\x00" * 4, ErrorCode.FRAME_SIZE_ERROR),  # PRIORITY
        (frame_head(1, 0x4, 0x1, 0) + b"\x00", ErrorCode.FRAME_SIZE_ERROR),  # SETTINGS ACK
        (frame_head(0, 0x4, 0, 1), ErrorCode.PROTOCOL_ERROR),
        (frame_head(3, 0x9, 0x4, 1) + b"abc", ErrorCode.PROTOCOL_ERROR),  # lone CONTINUATION
        (_headers(2), ErrorCode.PROTOCOL_ERROR),  # an even stream id
        (_headers(1, flags=0) + frame_head(8, 0x6, 0, 0) + b"\x00" * 8, ErrorCode.PROTOCOL_ERROR),
        (frame_head(3, 0x1, 0x4, 1) + b"\xff\xff\xff", ErrorCode.COMPRESSION_ERROR),
        (frame_head(2, 0x0, 0x8, 1) + b"\x05a", ErrorCode.PROTOCOL_ERROR),  # padding
        (frame_head(1 << 14, 0x0, 0, 1) + b"x" * (1 << 14), ErrorCode.PROTOCOL_ERROR),
    ],
)
def test_a_broken_frame_ends_the_connection_with_its_code(wire: bytes, code: ErrorCode) -> None:
    assert _broken(_started(), wire) == code


def test_window_overflow_on_a_stream_resets_only_that_stream() -> None:
    server = _started()
    events = server.receive_data(
        _headers(1) + frame_head(4, 0x8, 0, 1) + U32.pack((1 << 31) - 1) + _headers(3)
    )
    assert StreamReset(1, ErrorCode.FLOW_CONTROL_ERROR) in events
    assert [e.stream_id for e in events if isinstance(e, RequestReceived)] == [1, 3]
    assert 1 not in server.streams and server.open


def test_data_beyond_the_window_breaks_the_connection() -> None:
    server = ServerCodec(100)
    server.initiate()
    server.receive_data(PREFACE + frame_head(0, 0x4, 0, 0) + _headers(1))
    server.data_to_send()
    assert _broken(server, frame_head(101, 0x0, 0, 1) + b"x" * 101) == ErrorCode.FLOW_CONTROL_ERROR


def test_initial_window_change_moves_open_streams_windows() -> None:
    server = _started()
    server.receive_data(_headers(1))
    events = server.receive_data(frame_head(6, 0x4, 0, 0) + b"\x00\x04\x00\x00\x00\x10")
    assert server.streams[1].outbound_flow_control_window == 16
    assert server.data_to_send() == frame_head(0, 0x4, 0x1, 0)  # the ACK
    assert len(events) == 1
    events = server.receive_data(frame_head(4, 0x8, 0, 1) + U32.pack(10))
    assert events == [WindowUpdated(1)] and server.local_window(1) == 26


@pytest.mark.parametrize(
    ("extra", "body", "code"),
    [
        ([("content-length", "5")], b"abc", ErrorCode.PROTOCOL_ERROR),  # short
        ([("content-length", "2")], b"abc", ErrorCode.PROTOCOL_ERROR),  # long
        ([("Upper", "x")], b"", ErrorCode.PROTOCOL_ERROR),
        ([("connection", "close")], b"", ErrorCode.PROTOCOL_ERROR),
    ],
)
def test_a_malformed_request_is_reset_never_served(
    extra: list[tuple[str, str]], body: bytes, code: ErrorCode
) -> None:
    server = _started()
    events = server.receive_data(
        _headers(1, extra) + frame_head(len(body), 0x0, 0x1, 1) + body + _headers(3)
    )
    assert not any(isinstance(e, DataReceived) and e.ended and e.stream_id == 1 for e in events)
    assert frame_head(4, 0x3, 0, 1) + U32.pack(code) in server.data_to_send()
    assert [e.stream_id for e in events if isinstance(e, RequestReceived)][-1] == 3


def test_streams_beyond_the_maximum_are_refused() -> None:
    server = ServerCodec(WINDOW, max_streams=2)
    server.initiate()
    server.receive_data(PREFACE + frame_head(0, 0x4, 0, 0))
    server.data_to_send()
    events = server.receive_data(_headers(1) + _headers(3) + _headers(5))
    assert [e.stream_id for e in events if isinstance(e, RequestReceived)] == [1, 3]
    assert server.data_to_send() == frame_head(4, 0x3, 0, 5) + U32.pack(ErrorCode.REFUSED_STREAM)


def test_a_smaller_header_table_is_signalled_before_the_next_block() -> None:
    # RFC 7541 §4.2: h2's client decoder refuses a block without the update.
    client, server = _pair({h2.settings.SettingCodes.HEADER_TABLE_SIZE: 0})
    client.send_headers(1, REQUEST, end_stream=True)
    server.receive_data(client.data_to_send())
    assert server.table_update_owed
    stream = server.sendable(1)
    assert stream is not None
    frame = server.headers_frame(1, stream, response_head(200, "text/plain", 0), end=True)
    assert frame[9] == 0x20 and not server.table_update_owed
    events = client.receive_data(server.data_to_send() + frame)
    assert any(isinstance(e, h2.events.ResponseReceived) for e in events)
    assert not server.streams


def test_client_reset_and_goaway_are_reported() -> None:
    client, server = _pair()
    client.send_headers(1, REQUEST)
    client.reset_stream(1, error_code=8)
    events = server.receive_data(client.data_to_send())
    assert StreamReset(1, 8) in events and not server.streams
    client.close_connection()
    [ended] = server.receive_data(client.data_to_send())
    assert type(ended).__name__ == "ConnectionTerminated" and not server.open


_FRAMES = st.tuples(
    st.integers(0, 0xB), st.integers(0, 0xFF), st.integers(0, 9), st.binary(max_size=40)
).map(lambda f: frame_head(len(f[3]), f[0], f[1], f[2]) + f[3])


@given(
    frames=st.lists(_FRAMES | st.binary(max_size=20), max_size=12),
    requests=st.integers(0, 2),
)
@settings(max_examples=400)
def test_any_bytes_yield_events_or_a_protocol_error(frames: list[bytes], requests: int) -> None:
    # Whatever a client sends, the codec reports events or breaks the
    # connection with a GOAWAY: no other exception reaches the server.
    server = _started()
    wire = b"".join(_headers(2 * n + 1) for n in range(requests)) + b"".join(frames)
    try:
        server.receive_data(wire)
    except RemoteProtocolError:
        assert not server.open and server.data_to_send()[-14] == 0x7
