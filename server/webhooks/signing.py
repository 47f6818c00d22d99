"""The `Tailnetd-Signature` header: `t=<unix seconds>,v1=<hex HMAC-SHA256>`.

The HMAC is over `<t>.<body>` (the decimal time, a dot, the exact body bytes),
as Stripe signs its webhooks: a receiver recomputes it with the shared secret,
compares in constant time, and refuses a `t` too far from its own clock so a
captured delivery cannot be replayed later.
"""

from __future__ import annotations

import hashlib
import hmac

__all__ = ["HEADER", "sign", "verify"]

HEADER = "Tailnetd-Signature"


def _mac(secret: bytes, t: int, body: bytes) -> str:
    return hmac.new(secret, str(t).encode() + b"." + body, hashlib.sha256).hexdigest()


def sign(secret: bytes, t: int, body: bytes) -> str:
    """The header value for `body` sent at unix time `t`."""
    return f"t={t},v1={_mac(secret, t, body)}"


def verify(secret: bytes, header: str, body: bytes, *, now: int, tolerance: int = 300) -> bool:
    """Whether `header` signs `body` with `secret`, made within `tolerance` seconds of `now`."""
    parts = dict(part.partition("=")[::2] for part in header.split(","))
    t, given = parts.get("t", ""), parts.get("v1", "")
    if not t.isdigit() or abs(now - int(t)) > tolerance:
        return False
    return hmac.compare_digest(_mac(secret, int(t), body), given)
