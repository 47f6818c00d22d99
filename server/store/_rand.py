"""Unbiased choices from an injected byte source."""

from __future__ import annotations

from server.store.model import Rng

LOWER_ALNUM = "abcdefghijklmnopqrstuvwxyz0123456789"
ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZ" + LOWER_ALNUM


def randbelow(rng: Rng, n: int) -> int:
    """A uniform integer in [0, n), by rejection sampling (no modulo bias)."""
    if n <= 0:
        raise ValueError("randbelow needs a positive bound")
    bits = (n - 1).bit_length()
    nbytes = max(1, (bits + 7) // 8)
    mask = (1 << bits) - 1
    while True:
        value = int.from_bytes(rng(nbytes), "big") & mask
        if value < n:
            return value


def random_text(rng: Rng, alphabet: str, length: int) -> str:
    return "".join(alphabet[randbelow(rng, len(alphabet))] for _ in range(length))
