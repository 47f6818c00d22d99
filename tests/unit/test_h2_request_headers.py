"""server/edge/h2_request_headers.py is at least as strict as h2's inbound
validation (h2/utilities.py `validate_headers`, what the server ran before):
every header list h2 refuses, the codec refuses too."""

from __future__ import annotations

import h2.exceptions
import h2.utilities
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from server.edge.h2_request_headers import MalformedHeaders, check_request, check_trailers

REQUEST = [
    (b":method", b"POST"),
    (b":scheme", b"http"),
    (b":authority", b"127.0.0.1"),
    (b":path", b"/machine/map"),
]
_NAMES = [
    b":method",
    b":scheme",
    b":authority",
    b":path",
    b":status",
    b":protocol",
    b":x",
    b"host",
    b"te",
    b"connection",
    b"upgrade",
    b"content-length",
    b"Content-Type",
    b"x-ok",
    b"",
    b"a b",
    b"a:b",
    b"\x7f",
    b"\xc3\xa9",
]
_VALUES = [
    b"",
    b"POST",
    b"CONNECT",
    b"GET",
    b"/",
    b"127.0.0.1",
    b"trailers",
    b"12",
    b" 1",
    b"1\r\n",
    b"\x00",
    b"\xff",
    b"a\tb",
    b"x ",
]
_FLAGS = h2.utilities.HeaderValidationFlags(
    is_client=False, is_trailer=False, is_response_header=False, is_push_promise=False
)
_TRAILER_FLAGS = _FLAGS._replace(is_trailer=True)

headers = st.lists(
    st.tuples(
        st.sampled_from(_NAMES) | st.binary(max_size=6),
        st.sampled_from(_VALUES) | st.binary(max_size=6),
    ),
    max_size=8,
)


def _h2_accepts(listed: list[tuple[bytes, bytes]], flags: object) -> bool:
    try:
        list(h2.utilities.validate_headers(listed, flags))  # type: ignore[arg-type]
    except h2.exceptions.ProtocolError:
        return False
    return True


def _accepts(check: object, listed: list[tuple[bytes, bytes]]) -> bool:
    try:
        check(listed)  # type: ignore[operator]
    except MalformedHeaders:
        return False
    return True


@given(prefix=st.sampled_from([[], REQUEST, REQUEST[:3]]), extra=headers)
@example(prefix=REQUEST, extra=[(b"host", b"other")])
@example(prefix=REQUEST, extra=[(b"te", b"gzip")])
@example(prefix=REQUEST, extra=[(b"x", b"1"), (b":path", b"/")])
@settings(max_examples=500)
def test_every_request_h2_refuses_is_refused(
    prefix: list[tuple[bytes, bytes]], extra: list[tuple[bytes, bytes]]
) -> None:
    listed = prefix + extra
    if not _h2_accepts(listed, _FLAGS):
        assert not _accepts(check_request, listed)


@given(listed=headers)
@settings(max_examples=300)
def test_every_trailer_block_h2_refuses_is_refused(listed: list[tuple[bytes, bytes]]) -> None:
    if not _h2_accepts(listed, _TRAILER_FLAGS):
        assert not _accepts(check_trailers, listed)


def test_a_request_as_tailscaled_sends_it_is_taken() -> None:
    head = check_request([*REQUEST, (b"content-length", b"12"), (b"accept-encoding", b"gzip")])
    assert head.content_length == 12
    assert head.headers[3] == (":path", "/machine/map")


@pytest.mark.parametrize("value", [b"+1", b"1_0", b" 1", b"-1", b"\xd9\xa1"])
def test_content_length_is_digits_only(value: bytes) -> None:
    with pytest.raises(MalformedHeaders):
        check_request([*REQUEST, (b"content-length", value)])


def test_differing_content_lengths_are_refused() -> None:
    with pytest.raises(MalformedHeaders):
        check_request([*REQUEST, (b"content-length", b"1"), (b"content-length", b"2")])
