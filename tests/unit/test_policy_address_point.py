"""`address_point`: the C parser's reading of a node address is `span`'s."""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from gitctl.policy.addrs import address_point, span

v4 = st.integers(0, 2**32 - 1).map(lambda n: str(ipaddress.IPv4Address(n)))
v6 = st.integers(0, 2**128 - 1).map(lambda n: str(ipaddress.IPv6Address(n)))
v6_long = st.integers(0, 2**128 - 1).map(lambda n: ipaddress.IPv6Address(n).exploded)


@given(st.one_of(v4, v6, v6_long))
def test_address_point_is_the_span_start(text: str) -> None:
    s = span(text)
    assert address_point(text) == (s.version, s.lo)


def test_what_the_c_parser_refuses_goes_to_span() -> None:
    # A scoped IPv6 address: inet_pton refuses it, ipaddress reads it.
    s = span("fe80::1%eth0")
    assert address_point("fe80::1%eth0") == (6, s.lo)
    assert address_point("::ffff:1.2.3.4") == (6, span("::ffff:1.2.3.4").lo)
