"""RFC 3339 timestamps: strict parsing, always with a zone."""

from __future__ import annotations

import re
from datetime import datetime

__all__ = ["parse_rfc3339"]

# RFC 3339 section 5.6 date-time; "t", "z" and a space separator are allowed
# as the RFC's note permits. Fractions longer than microseconds (Go writes
# nanoseconds) are cut to what datetime holds.
_RFC3339 = re.compile(
    r"(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2})(?:\.(\d+))?([Zz]|[+-]\d{2}:\d{2})\Z"
)


def parse_rfc3339(text: str) -> datetime:
    """The aware datetime ``text`` names; ValueError (saying what is wanted) otherwise."""
    m = _RFC3339.match(text) if isinstance(text, str) else None
    if m is None:
        raise ValueError(
            f"{text!r} is not an RFC 3339 time with a zone, such as 2026-05-01T17:00:00Z"
        )
    date, clock, frac, zone = m.groups()
    frac = f".{frac[:6]:0<6}" if frac else ""
    zone = "+00:00" if zone in "Zz" else zone
    try:
        return datetime.fromisoformat(f"{date}T{clock}{frac}{zone}")
    except ValueError:
        raise ValueError(f"{text!r} is not a valid date and time") from None
