"""MapResponse framing: what the Go client's read loop will accept."""

from __future__ import annotations

import json

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from server.protocol.mapframe import (
    KEEPALIVE_JSON,
    MapFrameDecoder,
    MapFrameEncoder,
    MapFrameError,
)

DOCS = [
    b'{"Node":{"ID":1,"Name":"a.tail.example."},"Peers":[]}',
    KEEPALIVE_JSON,
    json.dumps({"Peers": [{"ID": i, "Name": f"n{i}"} for i in range(500)]}).encode(),
]


def test_keepalive_bytes_follow_rfc8878_by_hand() -> None:
    encoded = MapFrameEncoder().keepalive()
    # u32 little-endian length: 27 bytes of zstd follow.
    assert encoded[:4] == bytes.fromhex("1b000000")
    frame = encoded[4:]
    assert len(frame) == 27
    # RFC 8878 §3.1.1: magic 0xFD2FB528 little-endian; descriptor 0x20 =
    # single segment with a 1-byte content size; content size 18.
    assert frame[:6] == bytes.fromhex("28b52ffd2012")
    # §3.1.1.2: block header (18 << 3) | last = 0x91 → one raw block of 18 bytes.
    assert frame[6:9] == bytes.fromhex("910000")
    assert frame[9:] == KEEPALIVE_JSON
    assert json.loads(MapFrameDecoder().receive_data(encoded)[0]) == {"KeepAlive": True}


def test_keepalive_is_cached() -> None:
    encoder = MapFrameEncoder()
    assert encoder.keepalive() is encoder.keepalive()


def test_length_prefix_is_little_endian_and_frames_carry_content_size() -> None:
    encoded = MapFrameEncoder().encode(DOCS[2])
    frame_len = len(encoded) - 4
    assert frame_len > 255  # both prefix bytes matter
    assert encoded[:4] == frame_len.to_bytes(4, "little")
    assert zstandard.frame_content_size(encoded[4:]) == len(DOCS[2])


def test_round_trip_in_one_lump() -> None:
    encoder = MapFrameEncoder()
    body = b"".join(encoder.encode(doc) for doc in DOCS)
    assert MapFrameDecoder().receive_data(body) == DOCS


def test_round_trip_one_byte_at_a_time() -> None:
    encoder = MapFrameEncoder()
    body = b"".join(encoder.encode(doc) for doc in DOCS)
    decoder = MapFrameDecoder()
    out: list[bytes] = []
    for byte in body:
        out += decoder.receive_data(bytes([byte]))
    assert out == DOCS


def test_trailing_partial_message_waits_for_the_rest() -> None:
    encoder = MapFrameEncoder()
    body = encoder.encode(DOCS[0]) + encoder.encode(DOCS[1])
    decoder = MapFrameDecoder()
    assert decoder.receive_data(body[:-3]) == [DOCS[0]]
    assert decoder.receive_data(body[-3:]) == [DOCS[1]]
    assert decoder.receive_data(b"") == []


def test_concatenated_frames_in_one_message_decode_as_one_document() -> None:
    compressor = zstandard.ZstdCompressor()
    payload = compressor.compress(b'{"Peers":') + compressor.compress(b"[]}")
    message = len(payload).to_bytes(4, "little") + payload
    assert MapFrameDecoder().receive_data(message) == [b'{"Peers":[]}']


def test_oversized_declared_length_is_refused_before_reading() -> None:
    decoder = MapFrameDecoder(max_message=1000)
    with pytest.raises(MapFrameError, match="1001"):
        decoder.receive_data((1001).to_bytes(4, "little"))


def test_inflation_past_the_limit_is_refused() -> None:
    encoded = MapFrameEncoder().encode(b"[" + b"0," * 5000 + b"0]")
    with pytest.raises(MapFrameError, match="limit"):
        MapFrameDecoder(max_message=1000).receive_data(encoded)


@pytest.mark.parametrize("payload", [b"", b"{}", b"\x28\xb5\x2f\xfd"])
def test_non_zstd_payload_is_refused(payload: bytes) -> None:
    with pytest.raises(MapFrameError):
        MapFrameDecoder().receive_data(len(payload).to_bytes(4, "little") + payload)


@settings(max_examples=50, deadline=None)
@given(
    docs=st.lists(st.binary(min_size=1, max_size=3000), max_size=6),
    cuts=st.lists(st.integers(min_value=0, max_value=20000), max_size=10),
)
def test_random_chunking_round_trips(docs: list[bytes], cuts: list[int]) -> None:
    encoder = MapFrameEncoder()
    body = b"".join(encoder.encode(doc) for doc in docs)
    points = sorted({0, len(body), *(c % (len(body) + 1) for c in cuts)})
    decoder = MapFrameDecoder()
    out: list[bytes] = []
    for start, end in zip(points, points[1:], strict=False):
        out += decoder.receive_data(body[start:end])
    assert out == docs
