"""STUN binding requests and responses (RFC 5389 subset), sans-IO.

Only what netcheck needs: the client sends a binding request (SOFTWARE
"tailnode" + FINGERPRINT, tailscale `net/stun/stun.go`), the server answers
with XOR-MAPPED-ADDRESS holding the address the request came from.
See docs protocol.md §11.5.
"""

from __future__ import annotations

import ipaddress
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = [
    "MAGIC_COOKIE",
    "TXID_LEN",
    "BindingResponse",
    "binding_request",
    "binding_response",
    "is_stun",
    "parse_binding_request",
    "parse_binding_response",
]

MAGIC_COOKIE = b"\x21\x12\xa4\x42"
TXID_LEN = 12
HEADER_LEN = 20
BINDING_REQUEST = 0x0001
BINDING_SUCCESS = 0x0101

ATTR_MAPPED_ADDRESS = 0x0001
ATTR_XOR_MAPPED_ADDRESS = 0x0020
# Outside the RFC, but servers send it and tailscale's client accepts it.
ATTR_XOR_MAPPED_ADDRESS_ALT = 0x8020
ATTR_SOFTWARE = 0x8022
ATTR_FINGERPRINT = 0x8028

SOFTWARE = b"tailnode"  # 8 bytes, so no padding
_FINGERPRINT_XOR = 0x5354554E
_FAMILY_LEN = {1: 4, 2: 16}


def is_stun(data: bytes) -> bool:
    """Whether a datagram looks like STUN: top two bits zero and the magic cookie."""
    return len(data) >= HEADER_LEN and data[0] & 0xC0 == 0 and data[4:8] == MAGIC_COOKIE


def _fingerprint(data: bytes) -> bytes:
    return (zlib.crc32(data) ^ _FINGERPRINT_XOR).to_bytes(4, "big")


def _attrs(data: bytes) -> Iterator[tuple[int, int, bytes]]:
    """(offset, type, value) per attribute of a whole message; ValueError if malformed."""
    pos = HEADER_LEN
    while pos < len(data):
        if len(data) - pos < 4:
            raise ValueError("truncated attribute header")
        kind = int.from_bytes(data[pos : pos + 2], "big")
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        padded = (length + 3) & ~3
        if pos + 4 + padded > len(data):
            raise ValueError("attribute runs past the message")
        yield pos, kind, data[pos + 4 : pos + 4 + length]
        pos += 4 + padded


def _message(data: bytes, kind: int) -> bytes | None:
    """The message cut to its declared length if it is well-formed STUN of `kind`.

    Bytes past the declared length are ignored, as tailscale's client does.
    """
    if not is_stun(data) or int.from_bytes(data[0:2], "big") != kind:
        return None
    length = int.from_bytes(data[2:4], "big")
    if length % 4 or HEADER_LEN + length > len(data):
        return None
    return data[: HEADER_LEN + length]


def parse_binding_request(data: bytes) -> bytes | None:
    """The transaction id of a valid binding request, else None.

    Any attributes are tolerated; a FINGERPRINT, when present, must be last
    and correct, so corrupted datagrams are not answered.
    """
    msg = _message(data, BINDING_REQUEST)
    if msg is None:
        return None
    try:
        for offset, kind, value in _attrs(msg):
            if kind == ATTR_FINGERPRINT:
                last = offset + 8 == len(msg)
                if not last or len(value) != 4 or value != _fingerprint(msg[:offset]):
                    return None
    except ValueError:
        return None
    return msg[8 : 8 + TXID_LEN]


def binding_request(txid: bytes) -> bytes:
    """The request tailscale's client sends: SOFTWARE "tailnode" then FINGERPRINT."""
    if len(txid) != TXID_LEN:
        raise ValueError(f"transaction id must be {TXID_LEN} bytes")
    software = ATTR_SOFTWARE.to_bytes(2, "big") + len(SOFTWARE).to_bytes(2, "big") + SOFTWARE
    length = len(software) + 8
    head = BINDING_REQUEST.to_bytes(2, "big") + length.to_bytes(2, "big") + MAGIC_COOKIE + txid
    body = head + software
    return body + ATTR_FINGERPRINT.to_bytes(2, "big") + b"\x00\x04" + _fingerprint(body)


def _xor(data: bytes, txid: bytes) -> bytes:
    mask = MAGIC_COOKIE + txid
    return bytes(b ^ m for b, m in zip(data, mask, strict=False))


def binding_response(txid: bytes, addr: str, port: int) -> bytes:
    """A success response carrying XOR-MAPPED-ADDRESS for addr:port."""
    if len(txid) != TXID_LEN:
        raise ValueError(f"transaction id must be {TXID_LEN} bytes")
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"port {port} is out of range")
    ip = ipaddress.ip_address(addr)
    # A dual-stack socket reports IPv4 senders as ::ffff:a.b.c.d; answer as IPv4.
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    family = 1 if ip.version == 4 else 2
    value = bytes([0, family]) + (port ^ 0x2112).to_bytes(2, "big") + _xor(ip.packed, txid)
    attr = ATTR_XOR_MAPPED_ADDRESS.to_bytes(2, "big") + len(value).to_bytes(2, "big") + value
    head = BINDING_SUCCESS.to_bytes(2, "big") + len(attr).to_bytes(2, "big") + MAGIC_COOKIE
    return head + txid + attr


@dataclass(frozen=True, slots=True)
class BindingResponse:
    txid: bytes
    addr: str
    port: int


def _address(value: bytes, txid: bytes | None) -> tuple[str, int] | None:
    if len(value) < 4 or value[1] not in _FAMILY_LEN:
        return None
    raw = value[4 : 4 + _FAMILY_LEN[value[1]]]
    if len(raw) != _FAMILY_LEN[value[1]]:
        return None
    port = int.from_bytes(value[2:4], "big")
    if txid is not None:
        raw, port = _xor(raw, txid), port ^ 0x2112
    ip = ipaddress.ip_address(raw)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip), port


def parse_binding_response(data: bytes) -> BindingResponse | None:
    """The mapped address of a success response, preferring XOR-MAPPED-ADDRESS
    over MAPPED-ADDRESS as tailscale's `stun.ParseResponse` does; else None."""
    msg = _message(data, BINDING_SUCCESS)
    if msg is None:
        return None
    txid = msg[8 : 8 + TXID_LEN]
    mapped = fallback = None
    try:
        for _, kind, value in _attrs(msg):
            if kind in (ATTR_XOR_MAPPED_ADDRESS, ATTR_XOR_MAPPED_ADDRESS_ALT):
                mapped = _address(value, txid) or mapped
            elif kind == ATTR_MAPPED_ADDRESS:
                fallback = _address(value, None) or fallback
    except ValueError:
        return None
    found = mapped or fallback
    return None if found is None else BindingResponse(txid, *found)
