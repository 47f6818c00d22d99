"""Long pieces many messages hold (a user's packet-filter sources) are
compressed once, into a zstd frame of their own: every message still decodes
to exactly its JSON, and the piece is compressed once for all of them."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from server.protocol import mapframe
from server.protocol.mapframe import MapFrameDecoder, MapFrameEncoder, SplicedMessage
from server.store import open_store
from server.tailnet.mapencode import SPLICE_MIN
from server.tailnet.mapper import build_map
from tests.unit.control_client import T0
from tests.unit.test_commit_fanout import source, streaming

PIECE = json.dumps([f"100.64.{i // 250}.{i % 250}" for i in range(300)]).encode()


def inflate(body: bytes) -> bytes:
    """All the concatenated frames of one message, by zstandard's own reader
    (as Go's DecodeAll reads them), not by our decoder."""
    size = int.from_bytes(body[:4], "little")
    assert len(body) == 4 + size
    reader = zstandard.ZstdDecompressor().stream_reader(
        io.BytesIO(body[4:]), read_across_frames=True
    )
    return bytes(reader.read())


def spliced(head: bytes, tail: bytes, piece: bytes = PIECE) -> SplicedMessage:
    return SplicedMessage(head + piece + tail, ((len(head), piece),))


class CountingCompressor:
    def __init__(self, inner: zstandard.ZstdCompressor, sizes: list[int]) -> None:
        self.inner, self.sizes = inner, sizes

    def compress(self, data: Any) -> bytes:
        self.sizes.append(len(data))
        return self.inner.compress(data)


def test_a_piece_is_compressed_once_for_every_message_holding_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sizes: list[int] = []
    real = mapframe._compressor
    monkeypatch.setattr(
        mapframe, "_compressor", lambda level: CountingCompressor(real(level), sizes)
    )
    messages = [spliced(b'{"A":%d,"S":' % n, b',"B":[%d]}' % n) for n in range(5)]
    bodies = [MapFrameEncoder().encode(m) for m in messages]
    for message, body in zip(messages, bodies, strict=True):
        assert inflate(body) == message
        assert MapFrameDecoder().receive_data(body) == [message]
    assert sizes.count(len(PIECE)) <= 1  # once (or never: an earlier test's frame)
    assert len(sizes) - sizes.count(len(PIECE)) == 2 * len(messages)  # head and tail each


def test_a_shared_spliced_message_is_framed_once() -> None:
    message = SplicedMessage(b'{"S":' + PIECE + b"}", ((5, PIECE),), shared=True)
    assert MapFrameEncoder().encode(message) is MapFrameEncoder().encode(message)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.binary(max_size=300), min_size=1, max_size=5),
    st.lists(st.binary(min_size=1, max_size=2000), min_size=1, max_size=4),
)
def test_any_splicing_decodes_to_the_message(spans: list[bytes], pieces: list[bytes]) -> None:
    data, held, at = bytearray(), [], 0
    for n, span in enumerate(spans):
        data += span
        at += len(span)
        if n < len(pieces):
            held.append((at, pieces[n]))
            data += pieces[n]
            at += len(pieces[n])
    message = SplicedMessage(bytes(data), tuple(held))
    body = MapFrameEncoder().encode(message)
    assert inflate(body) == bytes(data)
    assert MapFrameDecoder().receive_data(body[:7] + body[7:]) == [bytes(data)]


def test_a_commit_sends_each_users_long_sources_as_one_shared_piece() -> None:
    store = open_store(Path(":memory:"))
    _, tailnet, streams = streaming(store, users=2, per_user=45)  # 90 addresses: past SPLICE_MIN
    tailnet.swap_source(source("c1", "22,443"))
    ctx = tailnet.context
    pieces: dict[str, set[int]] = {}
    for node_id, (handle, session) in streams.items():
        msg = session.step(ctx, handle.take_wake(), T0)
        assert type(msg) is SplicedMessage
        ((_, piece),) = msg.pieces
        assert len(piece) >= SPLICE_MIN
        owner = ctx.nodes[node_id].user
        assert owner is not None
        pieces.setdefault(owner, set()).add(id(piece))
        # What the client decodes is the message, and its filter is a fresh map's.
        got = json.loads(inflate(MapFrameEncoder().encode(msg)))
        assert got == json.loads(msg)
        fresh = build_map(ctx, node_id, T0)
        assert fresh is not None
        assert got["PacketFilter"] == json.loads(json.dumps(fresh.top["PacketFilter"]))
    # One piece object per user, held by every one of that user's messages.
    assert {k: len(v) for k, v in pieces.items()} == {"u0": 1, "u1": 1}
    store.close()


def test_short_frames_are_compressed_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    # A node's own short message and the spans between a spliced message's
    # pieces: zstd's fast level. Pieces (compressed once, sent with many
    # messages) and long frames keep the stream's level.
    levels: list[tuple[int, int]] = []
    real = mapframe._compressor

    class Recording(CountingCompressor):
        def __init__(self, level: int) -> None:
            super().__init__(real(level), [])
            self.level = level

        def compress(self, data: Any) -> bytes:
            levels.append((self.level, len(data)))
            return super().compress(data)

    monkeypatch.setattr(mapframe, "_compressor", Recording)
    own, long = b'{"A":1}', b'{"A":"%b"}' % (b"x" * mapframe.FAST_BELOW)
    piece = json.dumps([f"100.99.{i // 250}.{i % 250}" for i in range(300)]).encode()
    message = spliced(b'{"A":2,"S":', b',"B":[2]}', piece)
    for data in (own, long, message):
        body = MapFrameEncoder().encode(data)
        assert inflate(body) == data
        assert MapFrameDecoder().receive_data(body) == [data]
    fast = mapframe.FAST_LEVEL
    assert levels == [
        (fast, len(own)),
        (1, len(long)),
        (fast, len(b'{"A":2,"S":')),
        (1, len(piece)),
        (fast, len(b',"B":[2]}')),
    ]
