"""server/protocol/h2head.py: control responses' header blocks, checked
against RFC 7541's own examples and decoded by an independent HPACK decoder
(python-hpack, as the client's h2 uses), which must be left with an empty
dynamic table."""

from __future__ import annotations

import hpack
import pytest

from server.protocol.h2head import _integer, _literal, response_head


def test_integers_match_rfc7541_appendix_c1() -> None:
    # C.1.1: 10 with a 5-bit prefix; C.1.2: 1337 with a 5-bit prefix;
    # C.1.3: 42 starting at an octet boundary (8-bit prefix).
    assert _integer(10, 5, 0) == bytes.fromhex("0a")
    assert _integer(1337, 5, 0) == bytes.fromhex("1f9a0a")
    assert _integer(42, 8, 0) == bytes.fromhex("2a")


def test_literal_without_indexing_matches_rfc7541_appendix_c2_2() -> None:
    # C.2.2: ":path: /sample/path", name from static entry 4, not indexed.
    assert _literal(4, "/sample/path") == bytes.fromhex("040c2f73616d706c652f70617468")


@pytest.mark.parametrize(
    ("status", "content_type", "length"),
    [
        (200, "application/json", 312),
        (200, "application/json", None),  # a map stream: no length
        (200, "application/json", 0),
        (403, "text/plain; charset=utf-8", 24),  # not in the static table
        (500, "application/json", 70_000),
        (299, "x" * 300, 5),  # a value longer than a 7-bit prefix holds
    ],
)
def test_blocks_decode_to_the_headers_and_leave_the_table_empty(
    status: int, content_type: str, length: int | None
) -> None:
    decoder = hpack.Decoder()
    want = [(":status", str(status)), ("content-type", content_type)]
    if length is not None:
        want.append(("content-length", str(length)))
    for _ in range(2):  # twice: the cached prefix is the same bytes
        assert decoder.decode(response_head(status, content_type, length)) == want
    assert len(decoder.header_table.dynamic_entries) == 0


def test_statuses_in_the_static_table_are_one_byte() -> None:
    assert response_head(200, "application/json", None)[:1] == b"\x88"
    assert response_head(404, "application/json", None)[:1] == b"\x8d"


@pytest.mark.parametrize(("status", "content_type"), [(99, "a/b"), (1000, "a/b"), (200, "é/x")])
def test_what_it_cannot_encode_is_refused(status: int, content_type: str) -> None:
    with pytest.raises(ValueError):
        response_head(status, content_type, 1)
