"""A map stream whose messages are handed over as the client's read loop
receives them (`MapStream.listen`, what the load generator's clients use):
every message once and in order, whether it came before or after listening,
and the stream's end reported once."""

from __future__ import annotations

import asyncio

from bench.loadgen.mapstream import MapStream, ResponseStream
from server.protocol.mapframe import KEEPALIVE_JSON, MapFrameEncoder


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
    assert heard == [b'{"Node":{"ID":1}}', KEEPALIVE_JSON, b'{"PeersChanged":[]}', b'{"A":1}']


def test_a_message_already_split_off_by_next_is_not_lost() -> None:
    async def run() -> list[object]:
        stream = ResponseStream(asyncio.get_running_loop().create_future())
        stream.put(framed(b'{"Node":{"ID":1}}', b'{"A":1}'))
        map_stream = MapStream(NoCancel(), 1, 200, stream)
        assert await map_stream.next() == {"Node": {"ID": 1}}
        heard: list[object] = []
        map_stream.listen(heard.append, heard.append)
        return heard

    assert asyncio.run(run()) == [b'{"A":1}']


def test_the_end_is_reported_once_and_nothing_after_it() -> None:
    heard = asyncio.run(_listening([None], [framed(b"{}"), None]))
    assert heard == [("end", "map stream ended")]


def test_a_broken_frame_ends_the_stream_with_the_reason() -> None:
    bad = (4).to_bytes(4, "little") + b"nope"
    heard = asyncio.run(_listening([], [framed(b'{"A":1}'), bad, framed(b"{}")]))
    assert heard == [b'{"A":1}', ("end", "map message is not valid zstd")]
