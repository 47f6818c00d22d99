"""Node addresses to and from their text at C speed (`socket.inet_pton` /
`inet_ntop`): start-up reads every node's two addresses and the first compile
formats them again, ~30 µs a node through `ipaddress`'s pure-Python parser and
formatter. The text is the same as `str()` gives (RFC 5952: lower case, the
longest run of zero groups compressed); addresses with IPv4 embedded in their
last 32 bits, which libc writes differently, go through `ipaddress`.
"""

from __future__ import annotations

import contextlib
import socket
from ipaddress import IPv4Address, IPv6Address

__all__ = ["ip_text", "ipv4_from_text", "ipv6_from_text"]

_EMBEDDED_V4_PREFIX = bytes(10)  # ::/80 (IPv4-compatible and -mapped addresses)


def ipv4_from_text(text: str | IPv4Address) -> IPv4Address:
    """An address from sqlite's text (PostgreSQL's inet comes as an address)."""
    if isinstance(text, str):
        with contextlib.suppress(OSError):
            return IPv4Address(socket.inet_pton(socket.AF_INET, text))
    return IPv4Address(text)  # or ipaddress's own ValueError


def ipv6_from_text(text: str | IPv6Address) -> IPv6Address:
    if isinstance(text, str):
        with contextlib.suppress(OSError):  # a scope id, or not an address
            return IPv6Address(socket.inet_pton(socket.AF_INET6, text))
    return IPv6Address(text)


def ip_text(ip: IPv4Address | IPv6Address) -> str:
    """`str(ip)`, faster for IPv6."""
    if isinstance(ip, IPv6Address) and ip.scope_id is None:
        packed = ip.packed
        if packed[:10] != _EMBEDDED_V4_PREFIX:
            return socket.inet_ntop(socket.AF_INET6, packed)
    return str(ip)
