"""bench/loadgen/hpack_cache.py: the cached blocks are hpack's own, and the
encoder's table stays where hpack's would be, so the server decodes the same."""

from __future__ import annotations

import hpack
import pytest

from bench.loadgen import hpack_cache
from bench.loadgen.hpack_cache import CachingDecoder, CachingEncoder
from server.protocol.h2head import response_head


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


def test_decoded_heads_and_tables_match_a_plain_decoder() -> None:
    # The server's response heads (fixed blocks, no table changes) and blocks
    # that grow and evict the table, over several connections.
    heads = [response_head(200, "application/json", n) for n in (10, 11, 10)]
    heads += [response_head(200, "application/json", None), response_head(404, "text/plain", 0)]
    for round_ in range(3):
        encoder = hpack.Encoder()
        encoder.header_table_size = 128  # small: entries get evicted
        blocks = heads + [encoder.encode(h) for h in _requests([round_, 7, round_] * 4)]
        cached, plain = CachingDecoder(), hpack.Decoder()
        for raw in (False, True):
            for block in blocks:
                assert cached.decode(block, raw=raw) == plain.decode(block, raw=raw)
                assert list(cached.header_table.dynamic_entries) == list(
                    plain.header_table.dynamic_entries
                )


def test_a_block_over_the_header_list_limit_is_refused_every_time() -> None:
    block = response_head(200, "application/json", 123456)
    for _ in range(2):
        decoder = CachingDecoder()
        decoder.max_header_list_size = 10
        with pytest.raises(hpack.OversizedHeaderListError):
            decoder.decode(block)
