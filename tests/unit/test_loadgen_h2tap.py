"""The load generator's DATA-frame tap (bench/loadgen/h2tap.py) against h2:
frames built by hyperframe (h2's own frame codec) and a real h2 server
connection, and the WINDOW_UPDATEs a real h2 client connection sends for the
same bytes. Fed whole, byte at a time and in random pieces."""

from __future__ import annotations

from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings
import hypothesis.strategies as st
import pytest
from hyperframe.frame import (
    DataFrame,
    Frame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)
from hypothesis import given

from bench.loadgen.h2tap import DataTap, ForH2, StreamData, TapError, window_update


def data(stream_id: int, body: bytes, *, pad: int | None = None, end: bool = False) -> bytes:
    frame = DataFrame(stream_id, body)
    if pad is not None:
        frame.flags.add("PADDED")
        frame.pad_length = pad
    if end:
        frame.flags.add("END_STREAM")
    return frame.serialize()


def ping() -> bytes:
    return PingFrame(0, opaque_data=b"tailnetd").serialize()


SETTINGS = SettingsFrame(0, settings={SettingsFrame.MAX_CONCURRENT_STREAMS: 100}).serialize()
HEADERS = HeadersFrame(1, b"\x88", flags=["END_HEADERS"]).serialize()  # :status 200
# What a server sends a client polling on stream 1 while stream 3 answers a
# request: every kind of frame the tap must leave to h2 between stream 1's DATA.
FRAMES = [
    SETTINGS,
    data(1, b"first"),
    ping(),
    data(3, b"another stream's body"),
    data(1, b"padded", pad=7),
    data(1, b""),
    HeadersFrame(3, b"\x88", flags=["END_HEADERS", "END_STREAM"]).serialize(),
    data(1, b"second"),
]
WIRE = b"".join(FRAMES)
TAPPED = [
    StreamData(1, b"first", 5),
    StreamData(1, b"padded", 6 + 1 + 7),
    StreamData(1, b"", 0),
    StreamData(1, b"second", 6),
]


def flatten(items: list[Any]) -> list[Any]:
    """Runs of frames for h2 as one run: where a read ends splits them."""
    out: list[Any] = []
    for item in items:
        if isinstance(item, ForH2) and out and isinstance(out[-1], ForH2):
            out[-1] = ForH2(out[-1].data + item.data)
        else:
            out.append(item)
    return out


def following(*stream_ids: int) -> DataTap:
    tap = DataTap()
    for stream_id in stream_ids:
        tap.follow(stream_id)
    return tap


def test_a_followed_stream_s_data_is_tapped_and_every_other_frame_goes_to_h2_in_order() -> None:
    assert following(1).receive_data(WIRE) == [
        ForH2(SETTINGS),
        TAPPED[0],
        ForH2(FRAMES[2] + FRAMES[3]),
        TAPPED[1],
        TAPPED[2],
        ForH2(FRAMES[6]),
        TAPPED[3],
    ]
    assert following().receive_data(WIRE) == [ForH2(WIRE)]


def test_byte_at_a_time_and_with_a_partial_frame_at_the_end() -> None:
    tap = following(1)
    got = [item for byte in WIRE for item in tap.receive_data(bytes([byte]))]
    assert flatten(got) == flatten(following(1).receive_data(WIRE))
    tap = following(1)
    assert flatten(tap.receive_data(WIRE + FRAMES[1][:12])) == flatten(
        following(1).receive_data(WIRE)
    )
    assert tap.receive_data(FRAMES[1][12:]) == [TAPPED[0]]


@given(cuts=st.lists(st.integers(0, len(WIRE)), max_size=12))
def test_any_split_of_the_bytes_gives_the_same_frames(cuts: list[int]) -> None:
    tap = following(1)
    bounds = [0, *sorted(cuts), len(WIRE)]
    got = [
        item
        for a, b in zip(bounds, bounds[1:], strict=False)
        for item in tap.receive_data(WIRE[a:b])
    ]
    assert flatten(got) == flatten(following(1).receive_data(WIRE))


def test_the_stream_s_end_and_reset_go_to_h2_and_end_the_tapping() -> None:
    tap = following(1, 3)
    end = data(1, b"last", end=True)
    reset = RstStreamFrame(3, error_code=8).serialize()
    assert tap.receive_data(end + reset + data(1, b"x") + data(3, b"y")) == [
        ForH2(end + reset + data(1, b"x") + data(3, b"y"))
    ]
    assert not tap.following(1) and not tap.following(3)


def test_a_frame_over_the_limit_fails_before_its_body_arrives() -> None:
    header = (16385).to_bytes(3, "big") + b"\x00\x00\x00\x00\x00\x01"
    with pytest.raises(TapError, match="16385-byte frame"):
        following(1).receive_data(header)


def test_padding_longer_than_the_frame_fails() -> None:
    header = (3).to_bytes(3, "big") + b"\x00\x08\x00\x00\x00\x01"
    with pytest.raises(TapError, match="padding"):
        following(1).receive_data(header + b"\x03ab")
    with pytest.raises(TapError, match="padding"):
        following(1).receive_data((0).to_bytes(3, "big") + b"\x00\x08\x00\x00\x00\x01")


def test_data_past_the_stream_window_fails() -> None:
    tap = DataTap(stream_window=1024)
    tap.follow(1)
    tap.receive_data(data(1, bytes(1000)))
    with pytest.raises(TapError, match="flow-control window"):
        tap.receive_data(data(1, bytes(25)))


def test_window_updates_are_whole_frames() -> None:
    # RFC 9113 §6.9: length 4, type 8, no flags, the stream, a 31-bit increment.
    assert window_update(5, 40000) == WindowUpdateFrame(5, window_increment=40000).serialize()


def _connected(window: int) -> tuple[h2.connection.H2Connection, h2.connection.H2Connection]:
    """A real h2 client with stream 1 open and its receive window `window`
    (set as the load generator's client sets it), and the server answering it."""
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.local_settings = h2.settings.Settings(
        client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window}
    )
    client.initiate_connection()
    client.send_headers(
        1, [(":method", "POST"), (":scheme", "https"), (":authority", "a"), (":path", "/")]
    )
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    server.initiate_connection()
    server.receive_data(client.data_to_send())
    server.send_headers(1, [(":status", "200")])
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())
    return client, server


@pytest.mark.parametrize("window", [65535, 1024, 40000])
def test_window_updates_go_out_where_h2_s_would(window: int) -> None:
    """The server sends what its window allows; the h2 client and the tap
    read the same frames and acknowledge them: the same WINDOW_UPDATEs."""
    client, server = _connected(window)
    tap = DataTap(stream_window=window)
    tap.follow(1)
    for size in [100, 300, 200, 500, 1000, 12, 900, 700, 16000, 16384, 5, 40000, 3000] * 3:
        size = min(size, server.local_flow_control_window(1), server.max_outbound_frame_size)
        if size == 0:
            break
        server.send_data(1, bytes(size))
        wire = server.data_to_send()
        for event in client.receive_data(wire):
            if isinstance(event, h2.events.DataReceived):
                client.acknowledge_received_data(event.flow_controlled_length or 0, 1)
        h2_sent = client.data_to_send()
        for item in tap.receive_data(wire):
            assert isinstance(item, StreamData)
            tap.acknowledge(item.stream_id, item.flow_controlled)
        updates = [f.serialize() for f in _frames(h2_sent) if isinstance(f, WindowUpdateFrame)]
        assert tap.data_to_send() == b"".join(updates)
        server.receive_data(h2_sent)
    assert size != 0  # the window kept opening


def _frames(wire: bytes) -> list[Frame]:
    out = []
    while wire:
        frame, length = Frame.parse_frame_header(memoryview(wire[:9]))
        frame.parse_body(memoryview(wire[9 : 9 + length]))
        out.append(frame)
        wire = wire[9 + length :]
    return out


def test_a_stream_followed_after_its_headers_has_its_data_tapped_in_the_same_read() -> None:
    # The server sends a map poll's response headers with its first map.
    first_map = data(1, b"first map")
    tap = DataTap()
    got: list[ForH2 | StreamData] = []
    for item in tap.items(SETTINGS + HEADERS + first_map + ping()):
        got.append(item)
        if item == ForH2(SETTINGS + HEADERS):  # h2 reads the headers: the client follows
            tap.follow(1)
    assert got == [ForH2(SETTINGS + HEADERS), StreamData(1, b"first map", 9), ForH2(ping())]
    # Read whole, as before, the frames after the headers go to h2 with them.
    assert DataTap().receive_data(HEADERS + first_map) == [ForH2(HEADERS + first_map)]
