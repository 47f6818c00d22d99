"""A strict, cheap parse of an upgrade request that opens a connection.

Every control client opens its connection with one `POST /ts2021` head and
nothing else in HTTP/1.1; h11 parsing it was ~40 µs of a registration. This
takes only heads it can check in full against the grammar h11 enforces
(RFC 9112: a token method, a visible-ASCII target, HTTP/1.1, token field names,
visible-ASCII values, exactly one Host) that are upgrades on a given path and
carry no body. For anything else it says `DECLINED` and the caller hands every
byte to h11, so what it accepts is a subset of what h11 accepts and gives the
same head (the property test in tests/unit/test_upgrade_head.py). No I/O here.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from typing import Final, Literal

__all__ = ["DECLINED", "NEED_DATA", "UpgradeHead", "parse_upgrade_head"]

NEED_DATA: Final = "need-data"
DECLINED: Final = "declined"

_END = b"\r\n\r\n"
# Visible ASCII only (h11 also takes obs-text in values: those go to h11).
_REQUEST_LINE = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+) (/[!-~]*) HTTP/1\.1")
_NAME = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Stripped of spaces and tabs at both ends first, so a value here begins and
# ends with a visible character, as RFC 9110's field-value does.
_VALUE = re.compile(rb"[!-~ \t]*")
# Headers whose presence means a body or a framing rule h11 should judge.
_FRAMING = (b"transfer-encoding", b"content-length")


@dataclass(frozen=True, slots=True)
class UpgradeHead:
    """What h11 would have made of the head (names lower-cased, values
    stripped), and the bytes read past it."""

    method: str
    target: str
    headers: tuple[tuple[str, str], ...]
    trailing: bytes


def parse_upgrade_head(
    data: bytes | bytearray, upgrade_paths: Collection[str], max_head: int
) -> UpgradeHead | Literal["need-data", "declined"]:
    """The head and the bytes after it, for a bodiless upgrade request on one of
    `upgrade_paths`; NEED_DATA while the head may still come whole within
    `max_head`; DECLINED: leave it all to h11."""
    end = data.find(_END, 0, max_head + len(_END))
    if end < 0:
        # Not a complete head yet. A first line that already rules the fast
        # path out is declined now (an API request goes straight to h11).
        line_end = data.find(b"\r\n", 0, max_head)
        if len(data) >= max_head or (line_end >= 0 and _line(data[:line_end], upgrade_paths)):
            return DECLINED
        return NEED_DATA
    lines = bytes(data[:end]).split(b"\r\n")
    if _line(lines[0], upgrade_paths):
        return DECLINED
    match = _REQUEST_LINE.fullmatch(lines[0])
    assert match is not None  # _line checked it
    headers: list[tuple[str, str]] = []
    hosts = 0
    upgrade = None
    lengths = False
    for line in lines[1:]:
        raw_name, colon, raw_value = line.partition(b":")
        if not colon or _NAME.fullmatch(raw_name) is None:
            return DECLINED
        value = raw_value.strip(b" \t")
        if _VALUE.fullmatch(value) is None:
            return DECLINED
        name = raw_name.lower()
        if name == b"content-length" and value == b"0" and not lengths:
            lengths = True  # what the Go client sends: no body, as without it
        elif name in _FRAMING:
            return DECLINED  # h11 frames bodies and merges repeated lengths
        hosts += name == b"host"
        if upgrade is None and name == b"upgrade":
            upgrade = value  # the first one, as RequestHead.upgrade reads it
        headers.append((name.decode("ascii"), value.decode("ascii")))
    if hosts != 1 or not upgrade:
        return DECLINED
    return UpgradeHead(
        match[1].decode("ascii"),
        match[2].decode("ascii"),
        tuple(headers),
        bytes(data[end + len(_END) :]),
    )


def _line(line: bytes | bytearray, upgrade_paths: Collection[str]) -> bool:
    """True when this request line rules the fast path out."""
    match = _REQUEST_LINE.fullmatch(line)
    if match is None:
        return True
    path = match[2].split(b"?", 1)[0].decode("ascii")
    return path not in upgrade_paths
