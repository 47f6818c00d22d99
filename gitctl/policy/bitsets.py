"""Sets of node indices as Python ints: union, intersection and membership
in a few machine instructions per 64 nodes."""

from __future__ import annotations

from collections.abc import Iterable
from itertools import compress


def bitset(items: Iterable[int], size: int) -> int:
    """The set of node indices as an int (built in one pass, not bit by bit)."""
    buf = bytearray((size >> 3) + 1)
    for i in items:
        buf[i >> 3] |= 1 << (i & 7)
    return int.from_bytes(buf, "little")


_FLAGS = str.maketrans("01", "\x00\x01")


def bits(mask: int) -> list[int]:
    """Indices of the set bits, in order, in time linear in the mask's size
    (repeated big-int shifts would be quadratic)."""
    if mask.bit_count() * 4 < mask.bit_length():
        # sparse: jump from one "1" to the next in the binary text
        text = bin(mask)[:1:-1]
        out = []
        i = text.find("1")
        while i != -1:
            out.append(i)
            i = text.find("1", i + 1)
        return out
    # dense: one byte per bit, picked out in C
    flags = bin(mask)[:1:-1].translate(_FLAGS).encode()
    return list(compress(range(len(flags)), flags))
