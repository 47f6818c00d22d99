"""Given names: the unique DNS label each node answers to in MagicDNS."""

from __future__ import annotations

import re
from collections.abc import Callable

from server.store.model import InvalidName

__all__ = ["MAX_LABEL", "check_label", "label_from_hostname", "unique_label"]

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


def unique_label(base: str, taken: Callable[[str], bool]) -> str:
    """base, or base-1, base-2 … : the first one not taken, kept within 63 chars."""
    if not taken(base):
        return base
    n = 1
    while True:
        suffix = f"-{n}"
        candidate = base[: MAX_LABEL - len(suffix)].rstrip("-") + suffix
        if not taken(candidate):
            return candidate
        n += 1
