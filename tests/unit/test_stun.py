import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.protocol.stun import (
    binding_request,
    binding_response,
    is_stun,
    parse_binding_request,
    parse_binding_response,
)

TXID = bytes.fromhex("0102030405060708090a0b0c")

# What tailscaled 1.96.4 sends (protocol.md §11.5, appendix B: SOFTWARE "tailnode"
# then FINGERPRINT), laid out as tailscale net/stun/stun.go `Request` builds it;
# the CRC was computed once with zlib and is pinned here.
CLIENT_REQUEST = bytes.fromhex(
    "0001"
    "0014"
    "2112a442"
    "0102030405060708090a0b0c"
    "8022"
    "0008"
    "7461696c6e6f6465"  # SOFTWARE "tailnode"
    "8028"
    "0004"
    "b32c370f"  # FINGERPRINT
)

# Responses from real STUN servers, from tailscale net/stun/stun_test.go
# (commit 869226bb4fe1e70f22d13e00e235bc8ce55358a9, `responseTests`).
RESPONSE_VECTORS = [
    pytest.param(
        "0101000c2112a4422360b11e3ec68ffa93e08007002000080001c7866957856f",
        "2360b11e3ec68ffa93e08007",
        "72.69.33.45",
        59028,
        id="google-1",
    ),
    pytest.param(
        "0101000c2112a442f9f121cbde7d7c75923ce271002000080001c7876957856f",
        "f9f121cbde7d7c75923ce271",
        "72.69.33.45",
        59029,
        id="google-2",
    ),
    pytest.param(
        "010100442112a442482eb64715e8b28eaead6444000100080001e4ab4845212d"
        "000400080001"
        "2710d90a4498000500080001"
        "2711d9747a8a802000080001c5b9"
        "6957856f802200105"
        "66f766964612e6f726720302e393600",
        "482eb64715e8b28eaead6444",
        "72.69.33.45",
        58539,
        id="stun.sipgate.net:10000",
    ),
    pytest.param(
        "010100242112a4427e57966829f444609d1deaa6000100080001e9d34845212d"
        "0004000800010d964d48a9d40005000800010d974d48a9d5",
        "7e57966829f444609d1deaa6",
        "72.69.33.45",
        59859,
        id="stun.powervoip.com:3478",
    ),
    pytest.param(
        "010100242112a442ebc2d36ef471217c4f3e308e8022000a656e64706f696e74"
        "65720000002000080001ce665e12a44380280004b699bb02"
        "010100242112a442",
        "ebc2d36ef471217c4f3e308e",
        "127.0.0.1",
        61300,
        id="in-process pion server",
    ),
    pytest.param(
        "010100482112a44206f56685d28af3e69ce341e20001001400"
        "0290ce260200d1"
        "b4cfc10038b231fffeef96f6802b001400020d962604a880000200d100000000"
        "00c5700100200014"
        "0002b1dc0710a493b23aa785ea38c219620cd714",
        "06f56685d28af3e69ce341e2",
        "2602:d1:b4cf:c100:38b2:31ff:feef:96f6",
        37070,
        id="stuntman-server ipv6",
    ),
    pytest.param(
        "010100142112a442ebc2d36ef471217c4f3e308e8022000161000000002000080001ce665e12a443",
        "ebc2d36ef471217c4f3e308e",
        "127.0.0.1",
        61300,
        id="software-a",
    ),
    pytest.param(
        "010100142112a442ebc2d36ef471217c4f3e308e8022000361626300002000080001ce665e12a443",
        "ebc2d36ef471217c4f3e308e",
        "127.0.0.1",
        61300,
        id="software-abc",
    ),
    pytest.param(
        "010100182112a4424fd5d202dcb37d31fc773306002000140002cd3d2112a4424fd5d202dcb382ce2dc3fcc7",
        "4fd5d202dcb37d31fc773306",
        "209.180.207.193",
        60463,
        id="no-4in6",
    ),
]


@pytest.mark.parametrize(("hex_data", "txid", "addr", "port"), RESPONSE_VECTORS)
def test_parses_responses_from_real_stun_servers(
    hex_data: str, txid: str, addr: str, port: int
) -> None:
    response = parse_binding_response(bytes.fromhex(hex_data))
    assert response is not None
    assert (response.txid.hex(), response.addr, response.port) == (txid, addr, port)


def test_our_response_matches_the_pion_server_attribute_bytes() -> None:
    txid = bytes.fromhex("ebc2d36ef471217c4f3e308e")
    response = binding_response(txid, "127.0.0.1", 61300)
    assert response == bytes.fromhex(
        "0101000c2112a442ebc2d36ef471217c4f3e308e002000080001ce665e12a443"
    )


@pytest.mark.parametrize(
    ("addr", "port"), [("1.2.3.4", 254), ("1.2.3.4", 257), ("1::4", 254), ("1::4", 257)]
)
def test_response_round_trip_like_tailscale_TestResponse(addr: str, port: int) -> None:
    txid = bytes([port % 256]) * 12
    response = parse_binding_response(binding_response(txid, addr, port))
    assert response is not None and (response.txid, response.addr, response.port) == (
        txid,
        addr,
        port,
    )


def test_dual_stack_socket_addresses_are_answered_as_ipv4() -> None:
    response = parse_binding_response(binding_response(TXID, "::ffff:127.0.0.1", 41641))
    assert response is not None and response.addr == "127.0.0.1"
    assert binding_response(TXID, "::ffff:127.0.0.1", 1)[25] == 1  # family byte: IPv4


def test_the_real_client_request_is_accepted() -> None:
    assert parse_binding_request(CLIENT_REQUEST) == TXID
    assert binding_request(TXID) == CLIENT_REQUEST


def test_requests_without_attributes_or_with_trailing_bytes_are_accepted() -> None:
    bare = bytes.fromhex("000100002112a442") + TXID
    assert parse_binding_request(bare) == TXID
    assert parse_binding_request(CLIENT_REQUEST + b"junk") == TXID


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(CLIENT_REQUEST[:19], id="short header"),
        pytest.param(b"\x01\x01" + CLIENT_REQUEST[2:], id="not a request"),
        pytest.param(CLIENT_REQUEST[:4] + b"\x21\x12\xa4\x43" + CLIENT_REQUEST[8:], id="cookie"),
        pytest.param(b"\xc0" + CLIENT_REQUEST[1:], id="top bits set"),
        pytest.param(CLIENT_REQUEST[:-1], id="length beyond datagram"),
        pytest.param(CLIENT_REQUEST[:-1] + b"\x00", id="bad fingerprint"),
        pytest.param(
            CLIENT_REQUEST[:2] + b"\x00\x18" + CLIENT_REQUEST[4:] + b"\x80\x22\x00\x00",
            id="fingerprint not last",
        ),
        pytest.param(
            CLIENT_REQUEST[:2] + b"\x00\x04" + CLIENT_REQUEST[4:20] + b"\x80\x22\x00\x08",
            id="attribute past the end",
        ),
        pytest.param(CLIENT_REQUEST[:2] + b"\x00\x13" + CLIENT_REQUEST[4:], id="odd length"),
    ],
)
def test_garbage_is_not_a_binding_request(data: bytes) -> None:
    assert parse_binding_request(data) is None


def test_is_stun_vectors_from_tailscale_TestIs() -> None:
    cookie = b"\x21\x12\xa4\x42"
    assert not is_stun(b"")
    assert not is_stun(bytes(20))
    assert not is_stun(bytes(4) + cookie + bytes(11))
    assert is_stun(bytes(4) + cookie + bytes(12))
    assert is_stun(bytes(4) + cookie + bytes(12) + b"foo")
    assert not is_stun(b"\xf0" + bytes(3) + cookie + bytes(12))
    assert not is_stun(b"\x40" + bytes(3) + cookie + bytes(12))
    assert is_stun(b"\x20" + bytes(3) + cookie + bytes(12))


@given(st.binary(max_size=200))
def test_arbitrary_datagrams_never_raise(data: bytes) -> None:
    parse_binding_request(data)
    parse_binding_response(data)


@given(st.binary(min_size=12, max_size=12), st.ip_addresses(), st.integers(0, 65535))
def test_any_address_round_trips(txid: bytes, addr: object, port: int) -> None:
    response = parse_binding_response(binding_response(txid, str(addr), port))
    assert response is not None and response.txid == txid and response.port == port
    ip = addr.ipv4_mapped if getattr(addr, "ipv4_mapped", None) else addr  # type: ignore[attr-defined]
    assert response.addr == str(ip)
