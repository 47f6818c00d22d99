"""The checks on a request's decoded header list (RFC 9113 §8.2, §8.3): at
least as strict as h2's inbound validation (h2/utilities.py
`validate_headers`, which tests/unit/test_h2_request_headers.py uses as the
oracle), in one pass over the list instead of h2's chain of generators.
Malformed headers are a stream error: the request is refused, never served.
"""

from __future__ import annotations

__all__ = ["MalformedHeaders", "RequestHead", "check_request", "check_trailers"]

# Connection-specific fields (§8.2.2).
_CONNECTION = frozenset(
    {b"connection", b"proxy-connection", b"keep-alive", b"transfer-encoding", b"upgrade"}
)
_REQUEST_PSEUDO = frozenset({b":method", b":scheme", b":authority", b":path", b":protocol"})
# Bytes never allowed in a field name (§8.2.1): controls, space, uppercase, DEL and above.
_BAD_NAME = (
    frozenset(range(0x00, 0x21)) | frozenset(range(0x41, 0x5B)) | frozenset(range(0x7F, 0x100))
)
_BAD_VALUE = frozenset({0x00, 0x0A, 0x0D})
_EDGE_SPACE = frozenset({0x20, 0x09})

Header = tuple[bytes, bytes]


class MalformedHeaders(Exception):
    """A request's headers break §8.2/§8.3 (message ours, not the client's bytes)."""


class RequestHead:
    __slots__ = ("content_length", "headers")

    def __init__(self, headers: tuple[tuple[str, str], ...], content_length: int | None) -> None:
        self.headers = headers
        self.content_length = content_length


def _check_field(name: bytes, value: bytes) -> None:
    if not name:
        raise MalformedHeaders("empty field name")
    if name.find(b":", 1) != -1 or not _BAD_NAME.isdisjoint(name):
        raise MalformedHeaders("invalid character in a field name")
    if value:
        if not _BAD_VALUE.isdisjoint(value):
            raise MalformedHeaders("invalid character in a field value")
        if value[0] in _EDGE_SPACE or value[-1] in _EDGE_SPACE:
            raise MalformedHeaders("field value surrounded by whitespace")
    if name in _CONNECTION:
        raise MalformedHeaders("connection-specific field")
    if name == b"te" and value.lower() != b"trailers":
        raise MalformedHeaders("te other than trailers")


def _content_length(values: list[bytes]) -> int | None:
    if not values:
        return None
    if any(not v.isdigit() or not v.isascii() for v in values) or len(set(values)) != 1:
        raise MalformedHeaders("invalid content-length")
    return int(values[0])


def check_request(headers: list[Header]) -> RequestHead:
    """The request's headers as text (UTF-8, undecodable bytes replaced)
    with its content-length, or MalformedHeaders."""
    pseudo: dict[bytes, bytes] = {}
    regular = False
    host: bytes | None = None
    lengths: list[bytes] = []
    for name, value in headers:
        _check_field(name, value)
        if name[0] == 0x3A:
            if regular:
                raise MalformedHeaders("pseudo-header after a regular field")
            if name not in _REQUEST_PSEUDO:
                raise MalformedHeaders("unknown or response pseudo-header")
            if name in pseudo:
                raise MalformedHeaders("duplicate pseudo-header")
            pseudo[name] = value
            continue
        regular = True
        if name == b"host":
            if host is not None:
                raise MalformedHeaders("more than one host field")
            host = value
        elif name == b"content-length":
            lengths.append(value)
    _check_pseudo(pseudo, host)
    text = tuple((n.decode("ascii"), v.decode("utf-8", "replace")) for n, v in headers)
    return RequestHead(text, _content_length(lengths))


def _check_pseudo(pseudo: dict[bytes, bytes], host: bytes | None) -> None:
    method = pseudo.get(b":method")
    if method is None:
        raise MalformedHeaders("no :method")
    connect = method == b"CONNECT"
    if connect and b":protocol" not in pseudo:
        if b":scheme" in pseudo or b":path" in pseudo:
            raise MalformedHeaders("CONNECT with :scheme or :path")
    elif b":scheme" not in pseudo or b":path" not in pseudo:
        raise MalformedHeaders("no :scheme or :path")
    if not connect and b":protocol" in pseudo:
        raise MalformedHeaders(":protocol outside CONNECT")
    if b":path" in pseudo and not pseudo[b":path"]:
        raise MalformedHeaders("empty :path")
    authority = pseudo.get(b":authority")
    if authority is None and host is None:
        raise MalformedHeaders("neither :authority nor host")
    if authority is not None and host is not None and authority != host:
        raise MalformedHeaders(":authority and host differ")


def check_trailers(headers: list[Header]) -> None:
    for name, value in headers:
        _check_field(name, value)
        if name[0] == 0x3A:
            raise MalformedHeaders("pseudo-header in trailers")
