"""A control response's HTTP/2 header block, HPACK-encoded (RFC 7541) without
the dynamic table.

Every control response carries the same two or three headers (`:status`,
`content-type`, `content-length`); encoding them through `h2` (validation,
normalisation, the encoder's table search and Huffman coding) cost ~35 µs a
response, two per registration. Here a status and content type are encoded
once, and a length is appended as a literal. Nothing is added to either
side's dynamic table (static-table indexes and literals "without indexing"),
so the server keeps no HPACK encoder state at all (server/edge/h2_codec.py
sends only these blocks). Sans-IO: bytes out only.
"""

from __future__ import annotations

from functools import lru_cache

__all__ = ["response_head"]

# RFC 7541 Appendix A: the static table entries used here.
_STATUS_INDEXED = {200: 8, 204: 9, 206: 10, 304: 11, 400: 12, 404: 13, 500: 14}
_STATUS_NAME = 8  # ":status" (any value)
_CONTENT_LENGTH_NAME = 28
_CONTENT_TYPE_NAME = 31


def _integer(value: int, prefix_bits: int, first: int) -> bytes:
    """RFC 7541 §5.1: `value` in a `prefix_bits` prefix, `first` the high bits."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out = bytearray([first | limit])
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _literal(name_index: int, value: str) -> bytes:
    """§6.2.2: a literal field without indexing, its name from the static
    table, its value as a plain (not Huffman-coded) string."""
    data = value.encode("ascii")
    return _integer(name_index, 4, 0x00) + _integer(len(data), 7, 0x00) + data


@lru_cache(maxsize=64)
def _prefix(status: int, content_type: str) -> bytes:
    if status in _STATUS_INDEXED:
        head = _integer(_STATUS_INDEXED[status], 7, 0x80)  # §6.1: indexed field
    else:
        head = _literal(_STATUS_NAME, str(status))
    return head + _literal(_CONTENT_TYPE_NAME, content_type)


def response_head(status: int, content_type: str, content_length: int | None) -> bytes:
    """The header block of a response; `content_length` None: none (a stream)."""
    if not 100 <= status <= 999:
        raise ValueError("HTTP status must have three digits")
    block = _prefix(status, content_type)
    if content_length is None:
        return block
    return block + _literal(_CONTENT_LENGTH_NAME, str(content_length))
