"""HTTP/1.1 server side as a sans-IO machine on h11: bytes in, requests out.

`Http1Server` is fed what the socket gave (`receive_data`) and answers with
one event at a time (`next_event`): a whole request (head and a bounded body,
Content-Length or chunked), an upgrade to hand the raw connection over, a
refusal to write before closing, a clean close, or a call for more bytes.
Responses go out through `start_response`/`send_body`, which return the bytes
to write. No asyncio here: `server/edge/http1.py` pumps it.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

import h11

from server.edge import upgrade_head

__all__ = [
    "MAX_BODY",
    "MAX_HEAD",
    "BadRequest",
    "Closed",
    "Http1Event",
    "Http1Server",
    "NeedData",
    "Refused",
    "Request",
    "RequestHead",
    "Upgrade",
    "parse_request_head",
    "refusal",
]

MAX_HEAD = 64 * 1024
MAX_BODY = 4 * 1024 * 1024


class BadRequest(Exception):
    """The client sent something that is not an HTTP/1.1 request we accept."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True, slots=True)
class RequestHead:
    method: str
    target: str
    version: str
    headers: tuple[tuple[str, str], ...] = field(default=())

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def query(self) -> str:
        return self.target.split("?", 1)[1] if "?" in self.target else ""

    def header(self, name: str, default: str = "") -> str:
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return default

    def header_tokens(self, name: str) -> set[str]:
        return {t.strip().lower() for t in self.header(name).split(",") if t.strip()}

    @property
    def upgrade(self) -> str:
        return self.header("upgrade").strip().lower()


@dataclass(frozen=True, slots=True)
class NeedData:
    """Read more from the socket and pass it (b"" at EOF) to `receive_data`."""


@dataclass(frozen=True, slots=True)
class Closed:
    """The peer closed between requests: nothing more to do."""


@dataclass(frozen=True, slots=True)
class Refused:
    """Write `response` and close; nothing of the request is echoed."""

    status: int
    reason: str

    @property
    def response(self) -> bytes:
        return refusal(self.status, self.reason)


@dataclass(frozen=True, slots=True)
class Request:
    """A complete request: serve it, then `finish_response` says if another may follow."""

    head: RequestHead
    body: bytes


@dataclass(frozen=True, slots=True)
class Upgrade:
    """An upgrade request for one of the upgrade paths: the raw connection is the
    handler's now, starting with `trailing` (bytes already read past the head)."""

    head: RequestHead
    trailing: bytes


Http1Event = NeedData | Closed | Refused | Request | Upgrade

# What the client is told on a refusal: fixed texts by status, never h11's
# message (which may quote the request).
_REFUSALS = {
    400: "malformed request",
    413: "request body too large",
    431: "request head too large",
    501: "unsupported transfer-encoding",
}


def _head_of(event: h11.Request) -> RequestHead:
    version = event.http_version.decode("ascii")
    if not version.startswith("1."):
        raise BadRequest(400, _REFUSALS[400])
    return RequestHead(
        method=event.method.decode("ascii"),
        target=event.target.decode("latin-1"),
        version=version,
        headers=tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in event.headers),
    )


def _head_size(event: h11.Request) -> int:
    """The head's size on the wire, give or take the whitespace h11 drops."""
    line = len(event.method) + len(event.target) + 11
    return line + sum(len(k) + len(v) + 4 for k, v in event.headers.raw_items())


class Http1Server:
    """One server-side HTTP/1.1 connection: requests in order, keep-alive,
    pipelining, and the hand-over of upgrade requests on `upgrade_paths`."""

    def __init__(
        self,
        upgrade_paths: Collection[str] = (),
        *,
        max_head: int = MAX_HEAD,
        max_body: int = MAX_BODY,
    ) -> None:
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=max_head)
        self._upgrade_paths = upgrade_paths
        self._max_head = max_head
        self._max_body = max_body
        self._head: RequestHead | None = None
        self._body = bytearray()
        # The connection's first bytes, held back from h11 while they may be
        # an upgrade head that server/edge/upgrade_head.py takes on its own;
        # None once h11 has them (and everything after).
        self._first: bytearray | None = bytearray() if upgrade_paths else None

    def receive_data(self, data: bytes) -> None:
        if self._first is None:
            self._h11.receive_data(data)
        elif data:
            self._first += data
        else:  # the peer closed before a head we took: h11 says what that is
            self._to_h11()
            self._h11.receive_data(data)

    def _to_h11(self) -> None:
        if self._first is not None:
            first, self._first = bytes(self._first), None
            if first:
                self._h11.receive_data(first)

    def next_event(self) -> Http1Event:
        try:
            return self._next_event()
        except h11.RemoteProtocolError as exc:
            status = exc.error_status_hint if exc.error_status_hint in _REFUSALS else 400
            return Refused(status, _REFUSALS[status])
        except BadRequest as exc:
            return Refused(exc.status, exc.reason)

    def _next_event(self) -> Http1Event:
        if self._first is not None:
            parsed = upgrade_head.parse_upgrade_head(
                self._first, self._upgrade_paths, self._max_head
            )
            if parsed == upgrade_head.NEED_DATA:
                return NeedData()
            if isinstance(parsed, upgrade_head.UpgradeHead):
                self._first = None
                head = RequestHead(parsed.method, parsed.target, "1.1", parsed.headers)
                return Upgrade(head, parsed.trailing)
            self._to_h11()
        while True:
            event = self._h11.next_event()
            if event is h11.NEED_DATA:
                return NeedData()
            if event is h11.PAUSED or isinstance(event, h11.ConnectionClosed):
                return Closed()
            if isinstance(event, h11.Request):
                # h11 bounds only a head still incomplete; one that arrived whole is measured.
                if _head_size(event) > self._max_head:
                    raise BadRequest(431, _REFUSALS[431])
                head = self._head = _head_of(event)
                if head.path in self._upgrade_paths and head.upgrade:
                    return Upgrade(head, self._h11.trailing_data[0])
                self._check_length(head)
            elif isinstance(event, h11.Data):
                self._body += event.data
                if len(self._body) > self._max_body:
                    raise BadRequest(413, _REFUSALS[413])
            elif isinstance(event, h11.EndOfMessage):
                assert self._head is not None
                request = Request(self._head, bytes(self._body))
                self._body.clear()
                return request

    def _check_length(self, head: RequestHead) -> None:
        """Bounds first: a declared length over the limit is refused unread."""
        declared = head.header("content-length")
        if declared.isdigit() and int(declared) > self._max_body:
            raise BadRequest(413, _REFUSALS[413])

    def start_response(
        self, status: int, headers: Iterable[tuple[bytes, bytes]], reason: bytes = b""
    ) -> bytes:
        """The response head; chunked framing (or close-delimited for HTTP/1.0)
        when the headers carry no length."""
        response = h11.Response(
            status_code=status, headers=list(headers), reason=reason or _reason(status)
        )
        return self._h11.send(response) or b""

    def send_body(self, data: bytes, *, more: bool) -> bytes:
        assert self._head is not None
        out = b""
        if data and self._head.method != "HEAD":
            out += self._h11.send(h11.Data(data=data)) or b""
        if not more:
            out += self._h11.send(h11.EndOfMessage()) or b""
        return out

    def finish_response(self) -> bool:
        """After a complete response: True when the connection stays open for
        the next request (HTTP/1.1 without `Connection: close`)."""
        self._head = None
        if self._h11.our_state is h11.DONE and self._h11.their_state is h11.DONE:
            self._h11.start_next_cycle()
            return True
        return False


_REASONS = {
    200: b"OK",
    204: b"No Content",
    400: b"Bad Request",
    401: b"Unauthorized",
    403: b"Forbidden",
    404: b"Not Found",
    405: b"Method Not Allowed",
    413: b"Content Too Large",
    426: b"Upgrade Required",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    501: b"Not Implemented",
    503: b"Service Unavailable",
}


def _reason(status: int) -> bytes:
    return _REASONS.get(status, b"Status")


def refusal(status: int, text: str) -> bytes:
    """A complete plain-text response that closes the connection."""
    body = (text + "\n").encode()
    return (
        b"HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
        % (status, _reason(status), len(body), body)
    )


def parse_request_head(data: bytes) -> RequestHead:
    """One request head (without its final blank line), parsed as the front door does."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data + b"\r\n\r\n")
    try:
        event = conn.next_event()
    except h11.RemoteProtocolError as exc:
        raise BadRequest(400, _REFUSALS[400]) from exc
    if not isinstance(event, h11.Request):
        raise BadRequest(400, _REFUSALS[400])
    return _head_of(event)
