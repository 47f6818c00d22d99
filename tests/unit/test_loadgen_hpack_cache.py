"""bench/loadgen/hpack_cache.py: the cached blocks are hpack's own, and the
encoder's table stays where hpack's would be, so the server decodes the same."""

from __future__ import annotations

import hpack

from bench.loadgen import hpack_cache
from bench.loadgen.hpack_cache import CachingEncoder


def _requests(lengths: list[int]) -> list[list[tuple[str, str]]]:
    return [
        [
            (":method", "POST"),
            (":scheme", "https"),
            (":authority", "127.0.0.1:8080"),
            (":path", path),
            ("content-length", str(length)),
        ]
        for length in lengths
        for path in ("/machine/register", "/machine/map")
    ]


def test_blocks_and_tables_match_a_plain_encoder_across_connections() -> None:
    # Several connections, each a fresh encoder (and decoder) as a client's is;
    # later connections repeat earlier ones' requests, so most blocks are reused.
    for lengths in ([180, 181, 180], [190], [180, 181, 180], [180, 181, 180, 10, 180] * 3):
        cached, plain, decoder = CachingEncoder(), hpack.Encoder(), hpack.Decoder()
        for headers in _requests(lengths):
            block = cached.encode(headers)
            assert block == plain.encode(headers)
            assert list(cached.header_table.dynamic_entries) == list(
                plain.header_table.dynamic_entries
            )
            assert decoder.decode(block) == headers


def test_a_connection_that_repeats_another_encodes_nothing_anew() -> None:
    first, again = CachingEncoder(), CachingEncoder()
    requests = _requests([4321, 4322])
    for headers in requests:
        first.encode(headers)
    made = len(hpack_cache._blocks)
    for headers in requests:
        again.encode(headers)
    assert len(hpack_cache._blocks) == made


def test_a_table_size_update_is_still_sent() -> None:
    cached, plain, decoder = CachingEncoder(), hpack.Encoder(), hpack.Decoder()
    for encoder in (cached, plain):
        encoder.header_table_size = 256
    for headers in _requests([5, 5]):
        block = cached.encode(headers)
        assert block == plain.encode(headers)
        assert decoder.decode(block) == headers
    fresh = CachingEncoder()
    fresh.header_table_size = 256
    assert fresh.encode(_requests([5])[0])[0] & 0xE0 == 0x20  # opens with the size update
