"""The load generator's HTTP/2 client codec (bench/loadgen/h2client.py)
against the `h2` library it replaced: the same bytes out (preface, SETTINGS,
request heads, bodies, WINDOW_UPDATEs), and every response a real h2 server
sends read back, whole, byte at a time, or split anywhere.
"""

from __future__ import annotations

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest
from hyperframe.frame import DataFrame, Frame, WindowUpdateFrame
from hypothesis import given
from hypothesis import strategies as st

from bench.loadgen.h2client import (
    ClientCodec,
    DataReceived,
    Event,
    H2ClientError,
    PingAcked,
    ResponseReceived,
    StreamEnded,
    StreamReset,
)

HEAD = [(":method", "POST"), (":scheme", "https"), (":authority", "a"), (":path", "/machine/map")]


def _h2_client(window: int | None) -> h2.connection.H2Connection:
    """An h2 client set up as the loader's client was before this codec."""
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    settings: dict[h2.settings.SettingCodes, int] = {h2.settings.SettingCodes.ENABLE_PUSH: 0}
    if window is not None:
        settings[h2.settings.SettingCodes.INITIAL_WINDOW_SIZE] = window
    client.local_settings = h2.settings.Settings(client=True, initial_values=settings)
    return client


def _server() -> h2.connection.H2Connection:
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    server.initiate_connection()
    return server


def _frames(data: bytes) -> list[Frame]:
    frames, pos = [], 0
    while pos < len(data):
        frame, length = Frame.parse_frame_header(memoryview(data[pos : pos + 9]))
        frame.parse_body(memoryview(data[pos + 9 : pos + 9 + length]))
        frames.append(frame)
        pos += 9 + length
    return frames


def _open(window: int | None = None) -> tuple[ClientCodec, h2.connection.H2Connection]:
    """The codec with stream 1 open (a request with a body) and answered 200."""
    codec, server = ClientCodec(window=window), _server()
    codec.initiate()
    codec.send_headers(1, [*HEAD, ("content-length", "3")], end_stream=False)
    codec.send_data(1, b"abc", end_stream=True)
    server.receive_data(codec.data_to_send())
    server.send_headers(1, [(":status", "200"), ("content-type", "application/json")])
    events = codec.receive_data(server.data_to_send())
    assert ResponseReceived(1, {":status": "200", "content-type": "application/json"}) in events
    server.receive_data(codec.data_to_send())  # the SETTINGS ACK
    return codec, server


@pytest.mark.parametrize("window", [None, 1024, 40000, 4 << 20])
def test_the_requests_bytes_are_h2_s(window: int | None) -> None:
    codec, client = ClientCodec(window=window), _h2_client(window)
    codec.initiate()
    client.initiate_connection()
    for stream_id, body in [(1, b"x" * 700), (3, b""), (5, b"y" * 20)]:
        head = [*HEAD, ("content-length", str(len(body)))]
        codec.send_headers(stream_id, head, end_stream=not body)
        client.send_headers(stream_id, head, end_stream=not body)
        if body:
            codec.send_data(stream_id, body, end_stream=True)
            client.send_data(stream_id, body, end_stream=True)
    assert codec.data_to_send() == client.data_to_send()


def test_a_response_is_read_to_its_end() -> None:
    codec, server = _open()
    server.send_data(1, b'{"ok":', end_stream=False)
    server.send_data(1, b"1}", end_stream=True)
    events = codec.receive_data(server.data_to_send())
    assert events == [DataReceived(1, b'{"ok":', 6), DataReceived(1, b"1}", 2), StreamEnded(1)]
    assert 1 not in codec.streams


def test_headers_with_end_stream_end_the_stream() -> None:
    codec, server = ClientCodec(), _server()
    codec.initiate()
    codec.send_headers(1, HEAD, end_stream=True)
    server.receive_data(codec.data_to_send())
    server.send_headers(1, [(":status", "200"), ("content-length", "0")], end_stream=True)
    events = codec.receive_data(server.data_to_send())
    assert events[-2:] == [
        ResponseReceived(1, {":status": "200", "content-length": "0"}),
        StreamEnded(1),
    ]


@given(st.lists(st.integers(1, 400), min_size=1, max_size=8))
def test_bytes_split_anywhere_read_the_same(cuts: list[int]) -> None:
    codec, server = _open()
    server.send_data(1, b"a" * 1000, pad_length=7)
    server.ping(b"12345678")
    server.reset_stream(1, error_code=8)
    wire = server.data_to_send()
    events: list[Event] = []
    pos = 0
    for cut in [*cuts, len(wire)]:
        events += codec.receive_data(wire[pos : pos + cut])
        pos += cut
        if pos >= len(wire):
            break
    events += codec.receive_data(wire[pos:])
    assert events == [DataReceived(1, b"a" * 1000, 1008), StreamReset(1, 8)]
    pong = _frames(codec.data_to_send())
    assert [type(f).__name__ for f in pong] == ["PingFrame"] and "ACK" in pong[0].flags


@pytest.mark.parametrize("window", [None, 1024, 40000])
def test_window_updates_go_out_where_h2_s_would(window: int | None) -> None:
    """The same server frames read by h2's client and by the codec, each
    acknowledged as read: the same WINDOW_UPDATEs, frame for frame."""
    codec, server = _open(window)
    client = _h2_client(window)
    client.initiate_connection()
    client.send_headers(1, [*HEAD, ("content-length", "3")], end_stream=False)
    client.send_data(1, b"abc", end_stream=True)
    twin = _server()
    twin.receive_data(client.data_to_send())
    twin.send_headers(1, [(":status", "200"), ("content-type", "application/json")])
    client.receive_data(twin.data_to_send())
    twin.receive_data(client.data_to_send())
    for size in [100, 300, 200, 500, 1000, 12, 900, 700, 16000, 16384, 5, 40000, 3000] * 3:
        size = min(size, server.local_flow_control_window(1), server.max_outbound_frame_size)
        if size == 0:
            break
        server.send_data(1, bytes(size))
        wire = server.data_to_send()
        for event in codec.receive_data(wire):
            if isinstance(event, DataReceived):
                codec.acknowledge(event.stream_id, event.flow_controlled)
        for h2_event in client.receive_data(wire):
            if isinstance(h2_event, h2.events.DataReceived):
                client.acknowledge_received_data(h2_event.flow_controlled_length or 0, 1)
        ours, theirs = codec.data_to_send(), client.data_to_send()
        assert ours == theirs
        assert all(isinstance(f, WindowUpdateFrame) for f in _frames(ours))
        server.receive_data(ours)


def test_a_body_waits_for_the_server_s_window() -> None:
    codec, server = ClientCodec(), _server()
    codec.initiate()
    server.receive_data(codec.data_to_send())
    codec.receive_data(server.data_to_send())
    codec.send_headers(1, HEAD, end_stream=False)
    assert codec.flow_control_window(1) == 65535
    for _ in range(3):
        codec.send_data(1, bytes(16384), end_stream=False)
    assert codec.flow_control_window(1) == 65535 - 3 * 16384
    with pytest.raises(ValueError):
        codec.send_data(1, bytes(16384), end_stream=False)
    server.receive_data(codec.data_to_send())
    server.acknowledge_received_data(3 * 16384, 1)
    codec.receive_data(server.data_to_send())
    assert codec.flow_control_window(1) == 65535


def test_a_ping_ack_is_reported() -> None:
    codec, server = _open()
    codec.ping(b"tailnetd")
    for event in server.receive_data(codec.data_to_send()):
        assert isinstance(event, h2.events.PingReceived)
    assert codec.receive_data(server.data_to_send()) == [PingAcked(b"tailnetd")]


def test_data_on_a_cancelled_stream_still_returns_the_connection_window() -> None:
    codec, server = _open()
    codec.reset(1, 8)
    server.receive_data(codec.data_to_send())
    wire = DataFrame(1, data=bytes(40000 // 4)).serialize() * 4  # sent before the reset arrived
    assert codec.receive_data(wire) == []
    updates = [f for f in _frames(codec.data_to_send()) if isinstance(f, WindowUpdateFrame)]
    assert [f.stream_id for f in updates] == [0] and updates[0].window_increment == 40000


@pytest.mark.parametrize(
    "wire",
    [
        DataFrame(1, data=bytes(16385)).serialize(),  # over the frame size
        b"\x00\x00\x08\x06\x00\x00\x00\x00\x01" + bytes(8),  # PING on a stream
        b"\x00\x00\x03\x04\x00\x00\x00\x00\x00abc",  # SETTINGS of a wrong length
        b"\x00\x00\x00\x05\x04\x00\x00\x00\x01",  # PUSH_PROMISE
    ],
)
def test_a_broken_server_ends_the_connection(wire: bytes) -> None:
    codec, _ = _open()
    with pytest.raises(H2ClientError):
        codec.receive_data(wire)


def test_data_over_the_window_ends_the_connection() -> None:
    codec, _ = _open(window=1024)
    with pytest.raises(H2ClientError):
        codec.receive_data(DataFrame(1, data=bytes(1025)).serialize())
