"""A map stream whose messages are handed over as the client's read loop
receives them (`MapStream.listen`, what the load generator's clients use):
every message once, framed as it came and in order, whether it came before
or after listening, and the stream's end reported once; and the decoding that
the load generator's clients share."""

from __future__ import annotations

import asyncio

import pytest

from bench.loadgen.decode import SharedDecodes, decode_json
from bench.loadgen.frames import MessageSplitter
from bench.loadgen.mapstream import MapStream, ResponseStream
from server.protocol.mapframe import (
    KEEPALIVE_JSON,
    MapFrameEncoder,
    MapFrameError,
    SharedMessage,
    SplicedMessage,
)


class NoCancel:
    def cancel(self, stream_id: int) -> None:
        raise AssertionError("not cancelled here")


def framed(*messages: bytes) -> bytes:
    encoder = MapFrameEncoder()
    return b"".join(encoder.encode(m) for m in messages)


async def _listening(before: list[bytes | None], after: list[bytes | None]) -> list[object]:
    stream = ResponseStream(asyncio.get_running_loop().create_future())
    for chunk in before:
        stream.put(chunk)
    heard: list[object] = []
    MapStream(NoCancel(), 1, 200, stream).listen(
        heard.append, lambda why: heard.append(("end", why))
    )
    for chunk in after:
        stream.put(chunk)
    return heard


def test_messages_before_and_after_listening_come_in_order_and_keepalives_too() -> None:
    wire = framed(b'{"Node":{"ID":1}}', KEEPALIVE_JSON, b'{"PeersChanged":[]}', b'{"A":1}')
    cut = len(framed(b'{"Node":{"ID":1}}')) + 3  # inside the keep-alive's frame
    heard = asyncio.run(_listening([wire[:cut]], [wire[cut:]]))
    decode = SharedDecodes(decode_json)
    assert heard == MessageSplitter().receive_data(wire)
    assert [decode(m) for m in heard] == [  # type: ignore[arg-type]
        {"Node": {"ID": 1}},
        {"KeepAlive": True},
        {"PeersChanged": []},
        {"A": 1},
    ]


def test_a_stream_read_with_next_cannot_be_listened_to() -> None:
    async def run() -> None:
        stream = ResponseStream(asyncio.get_running_loop().create_future())
        stream.put(framed(b'{"Node":{"ID":1}}', b'{"A":1}'))
        map_stream = MapStream(NoCancel(), 1, 200, stream)
        assert await map_stream.next() == {"Node": {"ID": 1}}
        with pytest.raises(RuntimeError, match="next"):
            map_stream.listen(print, print)

    asyncio.run(run())


def test_the_end_is_reported_once_and_nothing_after_it() -> None:
    heard = asyncio.run(_listening([None], [framed(b"{}"), None]))
    assert heard == [("end", "map stream ended")]


def test_a_message_over_the_limit_ends_the_stream_with_the_reason() -> None:
    too_long = (65 << 20).to_bytes(4, "little")
    heard = asyncio.run(_listening([], [framed(b'{"A":1}'), too_long, framed(b"{}")]))
    assert heard == [
        framed(b'{"A":1}'),
        ("end", f"map message declares {65 << 20} bytes; the limit is {64 << 20}"),
    ]


def test_the_splitter_takes_bytes_whole_one_at_a_time_and_with_a_partial_tail() -> None:
    wire = framed(b'{"A":1}', KEEPALIVE_JSON, b'{"B":[1,2,3]}')
    whole = MessageSplitter().receive_data(wire)
    assert len(whole) == 3 and b"".join(whole) == wire
    splitter = MessageSplitter()
    assert [m for byte in wire for m in splitter.receive_data(bytes([byte]))] == whole
    splitter = MessageSplitter()
    assert splitter.receive_data(wire + wire[:6]) == whole
    assert splitter.receive_data(wire[6:]) == whole


def test_one_decode_serves_every_client_the_same_bytes_reach() -> None:
    decode = SharedDecodes(decode_json, limit=2)
    # A wave's delta: one object many streams send, compressed once.
    delta = SharedMessage(b'{"PeersChanged":[{"ID":7}]}')
    sent = [MapFrameEncoder().encode(delta) for _ in range(3)]
    assert [decode(bytes(m)) for m in sent] == [{"PeersChanged": [{"ID": 7}]}] * 3
    assert decode.decoded == 1
    # Spliced messages (several zstd frames) decode whole, each its own.
    spliced = SplicedMessage(b'{"A":"shared piece","B":1}', ((6, b"shared piece"),))
    assert decode(MapFrameEncoder().encode(spliced)) == {"A": "shared piece", "B": 1}
    assert decode(framed(b'{"C":2}')) == {"C": 2}
    assert decode(sent[0]) == {"PeersChanged": [{"ID": 7}]}  # the oldest went
    assert decode.decoded == 4


def test_a_message_that_is_not_zstd_fails_and_the_next_one_decodes() -> None:
    decode = SharedDecodes(decode_json)
    with pytest.raises(MapFrameError):
        decode((4).to_bytes(4, "little") + b"nope")
    assert decode(framed(b'{"A":1}')) == {"A": 1}


def test_what_comes_after_a_broken_message_is_dropped_not_queued() -> None:
    async def run() -> int:
        stream = ResponseStream(asyncio.get_running_loop().create_future())
        ended: list[str] = []
        MapStream(NoCancel(), 1, 200, stream).listen(SharedDecodes(decode_json), ended.append)
        stream.put((4).to_bytes(4, "little") + b"nope")
        stream.put(framed(b"{}"))
        assert ended == ["map message is not valid zstd"]
        return stream.chunks.qsize()

    assert asyncio.run(run()) == 0
