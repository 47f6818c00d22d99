import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from nacl.public import Box, PrivateKey, PublicKey

from server.protocol import derp
from server.protocol.derp import (
    ClientHello,
    ClientInfo,
    ConnState,
    DerpConnection,
    DerpLocalError,
    DerpProtocolError,
    Frame,
    FrameDecoder,
    FrameType,
    NotePreferred,
    PeerGoneReason,
    Ping,
    Pong,
    SendPacket,
    ServerInfo,
)
from server.protocol.keys import NodePrivate, NodePublic

SERVER = NodePrivate(bytes([7]) * 32)
CLIENT = NodePrivate(bytes([9]) * 32)
PEER = NodePrivate(bytes([11]) * 32).public()
NONCE = bytes(range(24))


def fixed_rng(n: int) -> bytes:
    return bytes([0x42]) * n


def test_box_layout_matches_go_nacl_box_vector() -> None:
    # golang.org/x/crypto nacl/box/box_test.go TestBox ("generated using the C
    # implementation of NaCl"); tailscale's SealTo prefixes the nonce.
    sealed = derp.seal_box(
        NodePrivate(bytes([2]) * 32),
        NodePrivate(bytes([1]) * 32).public(),
        bytes([3]) * 64,
        bytes([4]) * 24,
    )
    assert sealed == bytes([4]) * 24 + bytes.fromhex(
        "78ea30b19d2341ebbdba54180f821eec265cf86312549bea8a37652a8bb94f07"
        "b78a73ed1708085e6ddd0e943bbdeb8755079a37eb31d86163ce241164a47629"
        "c0539f330b4914cd135b3855bc2a2dfc"
    )


def test_frame_vectors_from_derp_go() -> None:
    assert derp.MAGIC == bytes.fromhex("44455250f09f9491")
    assert derp.DISCO_MAGIC == bytes.fromhex("5453f09f92ac")
    assert derp.keep_alive_frame() == b"\x06\x00\x00\x00\x00"
    assert derp.server_key_frame(PEER) == b"\x01\x00\x00\x00\x28" + derp.MAGIC + PEER.raw
    assert derp.recv_packet_frame(PEER, b"hi") == b"\x05\x00\x00\x00\x22" + PEER.raw + b"hi"
    assert derp.peer_gone_frame(PEER, PeerGoneReason.NOT_HERE) == (
        b"\x08\x00\x00\x00\x21" + PEER.raw + b"\x01"
    )
    assert derp.pong_frame(b"12345678") == b"\x13\x00\x00\x00\x0812345678"
    assert derp.note_preferred_frame(True) == b"\x07\x00\x00\x00\x01\x01"
    assert derp.health_frame("") == b"\x14\x00\x00\x00\x00"
    assert derp.restarting_frame(1000, 2000) == bytes.fromhex("1500000008000003e8000007d0")


STREAM = b"".join(
    [
        derp.keep_alive_frame(),
        derp.send_packet_frame(PEER, b"payload"),
        derp.encode_frame(0x7F, b"future"),
        derp.ping_frame(b"abcdefgh"),
    ]
)
EXPECTED = [
    Frame(FrameType.KEEP_ALIVE, b""),
    Frame(FrameType.SEND_PACKET, PEER.raw + b"payload"),
    Frame(0x7F, b"future"),
    Frame(FrameType.PING, b"abcdefgh"),
]


def test_decoder_whole_byte_at_a_time_and_with_trailing_partial_frame() -> None:
    assert FrameDecoder().receive_data(STREAM) == EXPECTED
    decoder = FrameDecoder()
    frames = [f for i in range(len(STREAM)) for f in decoder.receive_data(STREAM[i : i + 1])]
    assert frames == EXPECTED
    decoder = FrameDecoder()
    assert decoder.receive_data(STREAM + STREAM[5:12]) == EXPECTED
    assert decoder.buffered == 7
    assert decoder.receive_data(STREAM[12:]) == EXPECTED[1:]


@given(st.lists(st.integers(1, len(STREAM)), max_size=20))
def test_decoder_any_split(cuts: list[int]) -> None:
    decoder, frames, pos = FrameDecoder(), [], 0
    for cut in sorted(set(cuts)) + [len(STREAM)]:
        frames += decoder.receive_data(STREAM[pos:cut])
        pos = cut
    assert frames == EXPECTED


def test_oversized_frames_are_refused_from_the_header_alone() -> None:
    with pytest.raises(DerpProtocolError):
        FrameDecoder().receive_data(b"\x06" + (derp.MAX_FRAME_SIZE + 1).to_bytes(4, "big"))
    too_big_packet = 32 + derp.MAX_PACKET_SIZE + 1
    with pytest.raises(DerpProtocolError):
        FrameDecoder().receive_data(b"\x04" + too_big_packet.to_bytes(4, "big"))
    largest = derp.send_packet_frame(PEER, bytes(derp.MAX_PACKET_SIZE))
    assert len(FrameDecoder().receive_data(largest)) == 1
    with pytest.raises(DerpLocalError):
        derp.send_packet_frame(PEER, bytes(derp.MAX_PACKET_SIZE + 1))


def test_client_info_as_the_real_client_sends_it() -> None:
    # Observed from tailscaled 1.96.4 (protocol.md §11.4): {"version":2,"CanAckPings":true}
    sealed = Box(PrivateKey(CLIENT.raw), PublicKey(SERVER.public().raw)).encrypt(
        b'{"version":2,"CanAckPings":true}', NONCE
    )
    key, info = derp.parse_client_info(SERVER, CLIENT.public().raw + bytes(sealed))
    assert key == CLIENT.public()
    assert info == ClientInfo(version=2, can_ack_pings=True)
    assert info.to_json() == b'{"version":2,"CanAckPings":true}'


def test_client_info_fields_round_trip_and_match_go_names() -> None:
    info = ClientInfo(version=2, can_ack_pings=True, mesh_key="ab" * 32, is_prober=True)
    frame = derp.client_info_frame(CLIENT, SERVER.public(), info, NONCE)
    (decoded,) = FrameDecoder().receive_data(frame)
    assert decoded.type == FrameType.CLIENT_INFO
    assert derp.parse_client_info(SERVER, decoded.payload) == (CLIENT.public(), info)
    assert json.loads(info.to_json()) == {
        "version": 2,
        "meshKey": "ab" * 32,
        "CanAckPings": True,
        "IsProber": True,
    }
    assert ClientInfo.from_json(b'{"VERSION":2,"canackpings":true}') == ClientInfo(2, True)


@pytest.mark.parametrize(
    "body", [b"not json", b"[1]", b'{"version":"2"}', b'{"CanAckPings":1}', b'{"version":true}']
)
def test_malformed_client_info_is_a_protocol_error(body: bytes) -> None:
    sealed = derp.seal_box(CLIENT, SERVER.public(), body, NONCE)
    with pytest.raises(DerpProtocolError):
        derp.parse_client_info(SERVER, CLIENT.public().raw + sealed)


def test_client_info_sealed_to_another_key_does_not_open() -> None:
    sealed = derp.seal_box(CLIENT, PEER, ClientInfo(2).to_json(), NONCE)
    with pytest.raises(DerpProtocolError, match="does not open"):
        derp.parse_client_info(SERVER, CLIENT.public().raw + sealed)
    with pytest.raises(DerpProtocolError):
        derp.parse_client_info(SERVER, CLIENT.public().raw + bytes(10))


def test_server_info_is_version_2_boxed_to_the_client() -> None:
    frame = derp.server_info_frame(SERVER, CLIENT.public(), NONCE)
    (decoded,) = FrameDecoder().receive_data(frame)
    assert decoded.payload[:24] == NONCE
    opened = Box(PrivateKey(CLIENT.raw), PublicKey(SERVER.public().raw)).decrypt(decoded.payload)
    assert opened == b'{"version":2}'
    assert derp.parse_server_info(CLIENT, SERVER.public(), decoded.payload) == ServerInfo()


def test_payload_parsers() -> None:
    assert derp.parse_server_key(derp.MAGIC + PEER.raw + b"future") == PEER
    with pytest.raises(DerpProtocolError):
        derp.parse_server_key(b"DERP!!!!" + PEER.raw)
    assert derp.parse_peer_gone(PEER.raw) == (PEER, PeerGoneReason.DISCONNECTED)
    assert derp.parse_peer_gone(PEER.raw + b"\x01") == (PEER, PeerGoneReason.NOT_HERE)
    assert derp.split_key(PEER.raw + b"x") == (PEER, b"x")
    with pytest.raises(DerpProtocolError):
        derp.split_key(b"short")


def test_disco_detection_needs_magic_key_and_nonce() -> None:
    assert derp.looks_like_disco(derp.DISCO_MAGIC + bytes(56))
    assert not derp.looks_like_disco(derp.DISCO_MAGIC + bytes(55))
    assert not derp.looks_like_disco(b"\x00" * 80)


# --- the connection state machine -------------------------------------------------


def new_conn(now: float = 0.0) -> DerpConnection:
    return DerpConnection(SERVER, rng=fixed_rng, now=now, keepalive_interval=60.0)


def hello() -> bytes:
    return derp.client_info_frame(CLIENT, SERVER.public(), ClientInfo(2, True), NONCE)


def established(now: float = 0.0) -> DerpConnection:
    conn = new_conn(now)
    conn.receive_data(hello())
    conn.accept(now)
    conn.data_to_send()
    return conn


def test_handshake_server_key_then_client_info_then_server_info() -> None:
    conn = new_conn()
    assert conn.data_to_send() == derp.server_key_frame(SERVER.public())
    events = conn.receive_data(hello())
    assert events == [ClientHello(CLIENT.public(), ClientInfo(2, True))]
    assert conn.state is ConnState.AWAIT_ADMISSION and conn.data_to_send() == b""
    conn.accept(0.0)
    assert conn.is_open and conn.get_timer() == 60.0  # keepalive, not the handshake deadline
    frame = FrameDecoder().receive_data(conn.data_to_send())[0]
    assert frame.type == FrameType.SERVER_INFO
    assert derp.parse_server_info(CLIENT, SERVER.public(), frame.payload) == ServerInfo()


def test_frames_sent_before_server_info_are_reported_in_order_byte_at_a_time() -> None:
    stream = (
        hello()
        + derp.note_preferred_frame(True)
        + derp.send_packet_frame(PEER, b"wg")
        + derp.ping_frame(b"pingpong")
        + derp.pong_frame(b"12345678")
        + derp.encode_frame(0x7F, b"?")
    )
    conn = new_conn()
    events = [e for i in range(len(stream)) for e in conn.receive_data(stream[i : i + 1])]
    assert events == [
        ClientHello(CLIENT.public(), ClientInfo(2, True)),
        NotePreferred(True),
        SendPacket(PEER, b"wg"),
        Ping(b"pingpong"),
        Pong(b"12345678"),
    ]
    assert conn.unknown_frames == 1


def test_anything_before_client_info_is_refused_without_buffering_it() -> None:
    conn = new_conn()
    with pytest.raises(DerpProtocolError, match="key before anything"):
        conn.receive_data(b"\x04\x00\x00\xff\xff")


def test_client_info_over_256_kib_is_refused() -> None:
    conn = new_conn()
    with pytest.raises(DerpProtocolError):
        conn.receive_data(b"\x02" + (derp.MAX_CLIENT_INFO_LEN + 1).to_bytes(4, "big"))


def test_rejected_client_gets_nothing_more() -> None:
    conn = new_conn()
    conn.data_to_send()
    conn.receive_data(hello() + derp.send_packet_frame(PEER, b"x"))
    conn.reject()
    assert conn.state is ConnState.CLOSED and conn.data_to_send() == b""
    assert conn.receive_data(derp.ping_frame(b"pingpong")) == []
    with pytest.raises(DerpLocalError):
        conn.send_packet(PEER, b"x")


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (derp.encode_frame(FrameType.WATCH_CONNS), "mesh"),
        (derp.encode_frame(FrameType.CLOSE_PEER, PEER.raw), "mesh"),
        (derp.encode_frame(FrameType.NOTE_PREFERRED, b""), "1 byte"),
        (derp.encode_frame(FrameType.PING, b"short"), "8 bytes"),
        (derp.encode_frame(FrameType.SEND_PACKET, b"short"), "shorter than a key"),
    ],
)
def test_steady_state_violations(frame: bytes, message: str) -> None:
    with pytest.raises(DerpProtocolError, match=message):
        established().receive_data(frame)


def test_a_repeated_client_info_is_skipped_like_tailscale_does() -> None:
    conn = established()
    assert conn.receive_data(hello()) == []
    assert conn.state is ConnState.ESTABLISHED


def test_outgoing_frames() -> None:
    conn = established()
    conn.send_packet(PEER, b"data")
    conn.send_pong(b"pingpong")
    conn.send_peer_gone(PEER, PeerGoneReason.DISCONNECTED)
    conn.send_health("duplicate key")
    assert FrameDecoder().receive_data(conn.data_to_send()) == [
        Frame(FrameType.RECV_PACKET, PEER.raw + b"data"),
        Frame(FrameType.PONG, b"pingpong"),
        Frame(FrameType.PEER_GONE, PEER.raw + b"\x00"),
        Frame(FrameType.HEALTH, b"duplicate key"),
    ]


def test_send_packets_writes_the_same_bytes_as_one_frame_each() -> None:
    # RecvPacket per derp.go: 0x05, u32 big-endian length, 32-byte source key, packet.
    other = NodePrivate(bytes([13]) * 32).public()
    conn = established()
    conn.data_to_send()
    assert conn.send_packets([(PEER, b"hi"), (other, b""), (PEER, bytes(1400))]) == 3
    assert conn.data_to_send() == (
        b"\x05\x00\x00\x00\x22" + PEER.raw + b"hi"
        + b"\x05\x00\x00\x00\x20" + other.raw
        + b"\x05\x00\x00\x05\x98" + PEER.raw + bytes(1400)
    )  # fmt: skip
    with pytest.raises(DerpLocalError):
        conn.send_packets([(PEER, bytes(derp.MAX_PACKET_SIZE + 1))])


def test_packets_to_one_destination_share_one_key_object() -> None:
    conn = established()
    other = NodePrivate(bytes([13]) * 32).public()
    events = conn.receive_data(
        derp.send_packet_frame(PEER, b"1")
        + derp.send_packet_frame(other, b"2")
        + derp.send_packet_frame(PEER, b"3")
    )
    assert events == [SendPacket(PEER, b"1"), SendPacket(other, b"2"), SendPacket(PEER, b"3")]
    assert isinstance(events[0], SendPacket) and isinstance(events[2], SendPacket)
    assert events[0].dst is events[2].dst


def test_handshake_deadline() -> None:
    conn = new_conn(now=100.0)
    assert conn.get_timer() == 110.0
    conn.handle_timer(109.9)
    with pytest.raises(DerpProtocolError, match="handshake"):
        conn.handle_timer(110.0)
    assert conn.state is ConnState.CLOSED and conn.get_timer() is None


def test_keepalive_every_interval_once_established() -> None:
    conn = established(now=5.0)
    assert conn.get_timer() == 65.0
    conn.handle_timer(64.0)
    assert conn.data_to_send() == b""
    conn.handle_timer(66.0)
    assert conn.data_to_send() == derp.keep_alive_frame()
    assert conn.get_timer() == 126.0


# Every (state, input) pair: the table is the behaviour.
LOCAL_ACTIONS = {
    "accept": lambda c: c.accept(0.0),
    "reject": lambda c: c.reject(),
    "send": lambda c: c.send_pong(b"pingpong"),
    "close": lambda c: c.close(),
}


def conn_in(state: ConnState) -> DerpConnection:
    conn = new_conn()
    if state is not ConnState.AWAIT_CLIENT_INFO:
        conn.receive_data(hello())
    if state is ConnState.ESTABLISHED:
        conn.accept(0.0)
    if state is ConnState.CLOSED:
        conn.close()
    assert conn.state is state
    return conn


@pytest.mark.parametrize("state", list(ConnState))
@pytest.mark.parametrize("action", sorted(LOCAL_ACTIONS))
def test_local_transitions_follow_the_table(state: ConnState, action: str) -> None:
    conn = conn_in(state)
    expected = derp.TRANSITIONS.get((state, derp._Input(action)))
    if expected is None:
        with pytest.raises(DerpLocalError):
            LOCAL_ACTIONS[action](conn)
    else:
        LOCAL_ACTIONS[action](conn)
        assert conn.state is expected


@pytest.mark.parametrize("state", list(ConnState))
@pytest.mark.parametrize("frame", [hello(), derp.ping_frame(b"pingpong")], ids=["info", "ping"])
def test_remote_transitions_follow_the_table(state: ConnState, frame: bytes) -> None:
    conn = conn_in(state)
    given = derp._Input.CLIENT_INFO if frame[0] == FrameType.CLIENT_INFO else derp._Input.FRAME
    expected = derp.TRANSITIONS.get((state, given))
    if expected is None:
        with pytest.raises(DerpProtocolError):
            conn.receive_data(frame)
    else:
        conn.receive_data(frame)
        assert conn.state is expected


@given(st.binary(max_size=300))
def test_arbitrary_bytes_only_raise_protocol_errors(data: bytes) -> None:
    for conn in (new_conn(), established()):
        try:
            conn.receive_data(data)
        except DerpProtocolError:
            pass


def test_keys_are_typed() -> None:
    key, _ = derp.split_key(PEER.raw)
    assert isinstance(key, NodePublic)
