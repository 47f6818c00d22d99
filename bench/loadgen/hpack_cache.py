"""An HPACK encoder and decoder that remember the blocks they handled, for the
load generator.

Every simulated client opens its connection with the same few requests, so
each one HPACK-encodes (Huffman included) what the others already did: ~40 µs
a request on the cores the server shares. Encoding is a pure function of the
dynamic table and the headers, so a block made once is reused, with the table
it left, whenever the same headers meet the same table. The bytes on the wire
are the ones `hpack.Encoder` makes (the server decodes exactly what a fresh
encoder would send: its cost is not touched), and the table stays in step
with the server's decoder. The server's response heads are the same few blocks
too (server/protocol/h2head.py), ~30 µs each to decode with hpack's Huffman
code; `CachingDecoder` keeps what each block decoded to, and the table it left,
by the same rule. tests/unit/test_loadgen_hpack_cache.py checks both against
plain hpack.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import hpack

__all__ = ["CachingDecoder", "CachingEncoder"]

# Blocks kept per process: a fleet's requests differ only in a body length.
MAX_BLOCKS = 4096

_Key = tuple[Any, ...]
_Table = tuple[tuple[bytes, bytes], ...]
_blocks: dict[_Key, tuple[bytes, _Table, int]] = {}
_decoded: dict[_Key, tuple[tuple[Any, ...], _Table, int]] = {}


class CachingEncoder(hpack.Encoder):
    def encode(self, headers: Any, huffman: bool = True) -> bytes:
        table = self.header_table
        size = getattr(table, "_current_size", None)
        if table.resized or size is None or not isinstance(headers, list | tuple):
            return super().encode(headers, huffman)  # a size update is owed: as hpack does
        # The class stays in the key: a NeverIndexedHeaderTuple encodes differently.
        fields = tuple((type(h), *h) for h in headers)
        key = (huffman, table.maxsize, size, tuple(table.dynamic_entries), fields)
        hit = _blocks.get(key)
        if hit is None:
            block = super().encode(headers, huffman)
            if len(_blocks) < MAX_BLOCKS:
                _blocks[key] = (block, tuple(table.dynamic_entries), table._current_size)
            return block
        block, entries, after = hit
        table.dynamic_entries = deque(entries)
        table._current_size = after
        return block


class CachingDecoder(hpack.Decoder):
    def decode(self, data: bytes, raw: bool = False) -> Any:
        table = self.header_table
        size = getattr(table, "_current_size", None)
        if size is None:
            return super().decode(data, raw)
        # Everything the result or its errors depend on is in the key; a block
        # that fails is never stored, so it fails again the same way.
        key = (
            bytes(data),
            raw,
            table.maxsize,
            size,
            tuple(table.dynamic_entries),
            self.max_allowed_table_size,
            self.max_header_list_size,
        )
        hit = _decoded.get(key)
        if hit is None:
            headers = super().decode(data, raw)
            if len(_decoded) < MAX_BLOCKS:
                _decoded[key] = (tuple(headers), tuple(table.dynamic_entries), table._current_size)
            return headers
        headers, entries, after = hit
        table.dynamic_entries = deque(entries)
        table._current_size = after
        return list(headers)
