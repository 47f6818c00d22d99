"""Given names: the unique DNS label each node answers to in MagicDNS."""

from __future__ import annotations

import re
from collections.abc import Iterable

from server.store._sortedints import SortedInts
from server.store.model import InvalidName

__all__ = ["MAX_LABEL", "TakenNames", "check_label", "label_from_hostname"]

MAX_LABEL = 63  # RFC 1035 label limit
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z")
_NOT_LABEL_CHARS = re.compile(r"[^a-z0-9]+")
_FALLBACK = "node"


def label_from_hostname(hostname: str) -> str:
    """A valid label derived from what the client calls itself.

    "Alice's MacBook Pro.local" becomes "alice-s-macbook-pro": only the first
    label of a dotted name counts, every run of other characters becomes one
    hyphen, and a name with nothing usable becomes "node".
    """
    first = hostname.strip().split(".", 1)[0].lower()
    label = _NOT_LABEL_CHARS.sub("-", first).strip("-")[:MAX_LABEL].rstrip("-")
    return label or _FALLBACK


def check_label(name: str) -> str:
    """The name in its stored form (lowercase), or InvalidName saying why not."""
    label = name.strip().lower()
    if _LABEL.match(label) is None:
        raise InvalidName(
            f"{name!r} is not a valid node name: use 1 to {MAX_LABEL} letters, digits "
            "and hyphens, not starting or ending with a hyphen"
        )
    return label


class TakenNames:
    """The given names in use, indexed so the next free "base-N" costs O(log n).

    The rule: base itself, else base-1, base-2 … the lowest N whose name is
    free, with base cut short so the name stays within 63 characters. Every
    name "stem-N" (N written without a leading zero) is filed under its stem,
    and all the candidates with the same number of digits share one stem, so
    the lowest free N is a gap search per digit count.
    """

    __slots__ = ("_names", "_suffixes")

    def __init__(self, names: Iterable[str] = ()) -> None:
        self._names: set[str] = set()
        self._suffixes: dict[str, SortedInts] = {}
        for name in names:
            self.add(name)

    def __contains__(self, name: object) -> bool:
        return name in self._names

    def add(self, name: str) -> None:
        self._names.add(name)
        parts = _split_suffix(name)
        if parts is not None:
            self._suffixes.setdefault(parts[0], SortedInts()).add(parts[1])

    def discard(self, name: str) -> None:
        self._names.discard(name)
        parts = _split_suffix(name)
        if parts is not None and (numbers := self._suffixes.get(parts[0])) is not None:
            numbers.discard(parts[1])
            if not numbers:
                del self._suffixes[parts[0]]

    def unique(self, base: str) -> str:
        """base, or base-1, base-2 … : the first one not taken, kept within 63 chars."""
        if base not in self._names:
            return base
        digits = 1
        while True:
            stem = base[: MAX_LABEL - 1 - digits].rstrip("-")
            numbers = self._suffixes.get(stem)
            lo, hi = 10 ** (digits - 1), 10**digits - 1
            n = lo if numbers is None else numbers.first_free(lo, hi)
            if n is not None:
                return f"{stem}-{n}"
            digits += 1


def _split_suffix(name: str) -> tuple[str, int] | None:
    """("laptop", 12) for "laptop-12"; None when the name has no such suffix."""
    stem, dash, tail = name.rpartition("-")
    if not (stem and dash and tail.isascii() and tail.isdigit()) or tail[0] == "0":
        return None
    return stem, int(tail)
