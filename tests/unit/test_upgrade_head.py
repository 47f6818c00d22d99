"""server/edge/upgrade_head.py: the upgrade heads it takes come out as h11
would make them, and everything else is left to h11."""

from __future__ import annotations

import base64

from hypothesis import example, given, settings
from hypothesis import strategies as st

from server.edge.http1_conn import (
    BadRequest,
    Http1Server,
    NeedData,
    Refused,
    Upgrade,
    parse_request_head,
)
from server.edge.upgrade_head import DECLINED, NEED_DATA, UpgradeHead, parse_upgrade_head

PATHS = frozenset({"/ts2021", "/derp"})
# The head tailscaled 1.96.4 sent to open its control connection, captured
# through a loopback relay in front of `tailnetd serve` (`tailscale up
# --login-server`); the handshake is that run's Noise initiation.
HANDSHAKE = (
    b"AIUBAGBlte0Fs9tAxQfkJ0t+A15tipok4vIN9RQN7b3HpAadVvDmFitdcUoslk/QVLkQ9zKxoWyWReHEHm"
    b"XgM4p7lZezn3uuAs9s0/O9m6xKYHQfpJ/EO6NR4wy4wDaQQGhIe60="
)
GO_HEAD = (
    b"POST /ts2021 HTTP/1.1\r\nHost: 127.0.0.1:41833\r\nUser-Agent: Go-http-client/1.1\r\n"
    b"Content-Length: 0\r\nConnection: upgrade\r\nUpgrade: tailscale-control-protocol\r\n"
    b"X-Tailscale-Handshake: " + HANDSHAKE + b"\r\n\r\n"
)


def test_tailscaleds_upgrade_head_is_taken_as_h11_reads_it() -> None:
    parsed = parse_upgrade_head(GO_HEAD + b"noise", PATHS, 65536)
    assert isinstance(parsed, UpgradeHead)
    h11_head = parse_request_head(GO_HEAD[:-4])
    assert (parsed.method, parsed.target, parsed.headers) == (
        h11_head.method,
        h11_head.target,
        h11_head.headers,
    )
    assert parsed.trailing == b"noise"
    assert dict(parsed.headers)["x-tailscale-handshake"] == HANDSHAKE.decode()
    assert len(base64.b64decode(HANDSHAKE)) == 101  # the initiation's size


def test_fed_byte_at_a_time_the_server_upgrades_with_the_trailing_bytes() -> None:
    wire = GO_HEAD + b"noise bytes"
    for step in (1, 5, len(wire)):
        conn = Http1Server(PATHS)
        parts = [wire[i : i + step] for i in range(0, len(wire), step)]
        while isinstance(event := conn.next_event(), NeedData):
            conn.receive_data(parts.pop(0))
        assert isinstance(event, Upgrade)
        assert event.head.path == "/ts2021"
        assert event.head.upgrade == "tailscale-control-protocol"
        assert event.trailing + b"".join(parts) == b"noise bytes"


def test_what_it_declines_still_gets_h11s_answer() -> None:
    cases = {
        # a body, a chunked body: h11 frames those
        GO_HEAD.replace(b"Content-Length: 0", b"Content-Length: 5"): Upgrade,
        GO_HEAD.replace(b"Content-Length: 0", b"Transfer-Encoding: chunked"): Upgrade,
        GO_HEAD.replace(b"Content-Length: 0", b"Content-Length: 0\r\nContent-Length: 0"): Upgrade,
        # no Host, two Hosts, a space before the colon: h11 refuses
        GO_HEAD.replace(b"Host: 127.0.0.1:41833\r\n", b""): Refused,
        GO_HEAD.replace(b"Host:", b"Host: a\r\nHost:"): Refused,
        GO_HEAD.replace(b"Upgrade:", b"Upgrade :"): Refused,
        # HTTP/1.0, an obs-text value: h11 takes them
        GO_HEAD.replace(b"HTTP/1.1", b"HTTP/1.0"): Upgrade,
        GO_HEAD.replace(b"Go-http-client/1.1", b"Go\xff"): Upgrade,
    }
    for wire, kind in cases.items():
        assert parse_upgrade_head(wire, PATHS, 65536) == DECLINED, wire
        conn = Http1Server(PATHS)
        conn.receive_data(wire)
        assert isinstance(conn.next_event(), kind), wire


def test_requests_that_are_not_upgrades_go_to_h11_once_their_first_line_is_in() -> None:
    assert parse_upgrade_head(b"GET /key?v=133 HTTP/1.1\r\n", PATHS, 65536) == DECLINED
    assert parse_upgrade_head(b"POST /ts2021 HTTP/1.1\r\nHo", PATHS, 65536) == NEED_DATA
    assert parse_upgrade_head(b"POST /ts20", PATHS, 65536) == NEED_DATA
    # A head that cannot end within the bound: h11 refuses it with 431.
    assert parse_upgrade_head(b"POST /ts2021 HTTP/1.1\r\nX: " + b"a" * 100, PATHS, 64) == DECLINED


_tokens = st.text(alphabet="abcXYZ-_!0", min_size=1, max_size=8)
_values = st.text(alphabet=st.sampled_from("ab Z\t:/=\x7f\x80é"), max_size=10)


@settings(max_examples=300, deadline=None)
@given(
    method=st.sampled_from(["POST", "GET", "P:T", ""]),
    path=st.sampled_from(["/ts2021", "/derp", "/key", "/ts2021?x=1", "/a b"]),
    version=st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/2"]),
    fields=st.lists(
        st.tuples(
            st.one_of(_tokens, st.sampled_from(["Host", "Upgrade", "Content-Length", "a b"])),
            _values,
        ),
        max_size=6,
    ),
)
@example(
    method="POST", path="/ts2021", version="HTTP/1.1", fields=[("Host", "a"), ("Upgrade", "x")]
)
@example(
    method="GET",
    path="/derp",
    version="HTTP/1.1",
    fields=[("Upgrade", " \tDERP\t"), ("Content-Length", "0"), ("host", "a b:1"), ("X", "")],
)
def test_whatever_it_takes_h11_reads_the_same(
    method: str, path: str, version: str, fields: list[tuple[str, str]]
) -> None:
    head = f"{method} {path} {version}\r\n" + "".join(f"{k}:{v}\r\n" for k, v in fields)
    wire = head.encode("utf-8") + b"\r\n"
    parsed = parse_upgrade_head(wire, PATHS, 65536)
    if parsed == DECLINED:
        return
    assert isinstance(parsed, UpgradeHead)
    try:
        h11_head = parse_request_head(wire[:-4])
    except BadRequest:
        raise AssertionError(f"taken, but h11 refuses it: {wire!r}") from None
    assert (parsed.method, parsed.target, parsed.headers) == (
        h11_head.method,
        h11_head.target,
        h11_head.headers,
    )
    assert h11_head.path in PATHS and h11_head.upgrade
