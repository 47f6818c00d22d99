"""DERP framing and the server side of one DERP connection, sans-IO.

Wire format from tailscale `derp/derp.go`, `derp/derp_client.go` and
`derp/derpserver/derpserver.go` (v1.96.4); see docs protocol.md §11.4.
Every frame is `u8 type ‖ u32 big-endian length ‖ payload`. The handshake
boxes a small JSON document each way with NaCl box (X25519 +
XSalsa20-Poly1305), sealed as `24-byte nonce ‖ box`, which is exactly the
layout of PyNaCl's `Box.encrypt`.
"""

from __future__ import annotations

import hmac
import json
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum, IntEnum
from typing import Any, ClassVar, NamedTuple

from nacl.exceptions import CryptoError
from nacl.public import Box, PrivateKey, PublicKey

from server.protocol.keys import KEY_LEN, NodePrivate, NodePublic

__all__ = [
    "DISCO_MAGIC",
    "HANDSHAKE_TIMEOUT",
    "KEEPALIVE_INTERVAL",
    "MAGIC",
    "MAX_CLIENT_INFO_LEN",
    "MAX_FRAME_SIZE",
    "MAX_PACKET_SIZE",
    "NONCE_LEN",
    "PROTOCOL_VERSION",
    "ClientHello",
    "ClosePeer",
    "ForwardPacket",
    "ClientInfo",
    "ConnState",
    "DerpConnection",
    "DerpError",
    "DerpLocalError",
    "DerpProtocolError",
    "Event",
    "Frame",
    "FrameDecoder",
    "FrameType",
    "NotePreferred",
    "PeerGoneReason",
    "PeerPresentFlags",
    "Ping",
    "Pong",
    "SendPacket",
    "ServerInfo",
    "client_info_frame",
    "encode_frame",
    "forward_packet_frame",
    "mesh_key_matches",
    "frame_limit",
    "health_frame",
    "keep_alive_frame",
    "looks_like_disco",
    "note_preferred_frame",
    "open_box",
    "parse_client_info",
    "parse_forward_packet",
    "parse_peer_gone",
    "parse_peer_present",
    "parse_server_info",
    "parse_server_key",
    "peer_gone_frame",
    "peer_present_frame",
    "ping_frame",
    "pong_frame",
    "recv_packet_frame",
    "restarting_frame",
    "seal_box",
    "send_packet_frame",
    "server_info_frame",
    "server_key_frame",
    "split_key",
    "watch_conns_frame",
    "WatchConns",
]

MAGIC = "DERP🔑".encode()  # 44 45 52 50 f0 9f 94 91
DISCO_MAGIC = "TS💬".encode()  # 54 53 f0 9f 92 ac
PROTOCOL_VERSION = 2
NONCE_LEN = 24
HEADER_LEN = 5
_HEADER = struct.Struct(">BI")  # type, length
PING_LEN = 8

# One constant per bound, all checked against the declared length before the
# payload is buffered (derp.go readFrame; derpserver recvClientKey/handleFramePing).
MAX_FRAME_SIZE = 1 << 20  # the client's own read limit
MAX_PACKET_SIZE = 64 << 10
MAX_CLIENT_INFO_LEN = 256 << 10  # untrusted JSON before the handshake finishes
MAX_PING_LEN = 1000  # room for future extension, but not much

HANDSHAKE_TIMEOUT = 10.0
KEEPALIVE_INTERVAL = 60.0  # the client gives up after 120 s of silence


class FrameType(IntEnum):
    SERVER_KEY = 0x01
    CLIENT_INFO = 0x02
    SERVER_INFO = 0x03
    SEND_PACKET = 0x04
    RECV_PACKET = 0x05
    KEEP_ALIVE = 0x06
    NOTE_PREFERRED = 0x07
    PEER_GONE = 0x08
    PEER_PRESENT = 0x09
    FORWARD_PACKET = 0x0A
    WATCH_CONNS = 0x10
    CLOSE_PEER = 0x11
    PING = 0x12
    PONG = 0x13
    HEALTH = 0x14
    RESTARTING = 0x15


class PeerGoneReason(IntEnum):
    DISCONNECTED = 0x00
    NOT_HERE = 0x01


class PeerPresentFlags(IntEnum):
    """The flags byte after a PeerPresent key (derp.go `PeerPresentFlags`)."""

    IS_REGULAR = 1 << 0
    IS_MESH_PEER = 1 << 1
    IS_PROBER = 1 << 2
    NOT_IDEAL_CONN = 1 << 3


class DerpError(Exception):
    """Root of DERP errors."""


class DerpProtocolError(DerpError):
    """The peer broke the protocol; the connection must be closed."""


class DerpLocalError(DerpError):
    """This side misused the API (a bug here, not on the wire)."""


_LIMITS: dict[int, int] = {
    FrameType.CLIENT_INFO: MAX_CLIENT_INFO_LEN,
    FrameType.SEND_PACKET: KEY_LEN + MAX_PACKET_SIZE,
    FrameType.RECV_PACKET: KEY_LEN + MAX_PACKET_SIZE,
    FrameType.FORWARD_PACKET: 2 * KEY_LEN + MAX_PACKET_SIZE,
    FrameType.PING: MAX_PING_LEN,
    FrameType.PONG: MAX_PING_LEN,
}


def frame_limit(frame_type: int) -> int:
    """The largest payload accepted for a frame type."""
    return _LIMITS.get(frame_type, MAX_FRAME_SIZE)


class Frame(NamedTuple):
    """A named tuple, not a dataclass: one is made per relayed packet, and a
    frozen dataclass costs twice as much to build."""

    type: int  # not FrameType: unknown types are legal and skipped
    payload: bytes


class FrameDecoder:
    """Splits a byte stream into frames, refusing oversized ones from the header alone."""

    def __init__(self, limit: Callable[[int], int] = frame_limit) -> None:
        self._limit = limit
        self._buf = bytearray()
        self._pos = 0

    def receive_data(self, data: bytes) -> list[Frame]:
        self.feed(data)
        frames = []
        while (frame := self.next_frame()) is not None:
            frames.append(frame)
        return frames

    def feed(self, data: bytes) -> None:
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    def next_frame(self) -> Frame | None:
        """The next complete frame, or None until more bytes arrive.

        The limit is asked per frame, so a caller whose limits depend on state
        sees each frame's header only after the previous frame was handled.
        """
        start, buf = self._pos, self._buf
        if len(buf) - start < HEADER_LEN:
            return None
        frame_type, length = _HEADER.unpack_from(buf, start)
        limit = self._limit(frame_type)
        if length > limit:
            raise DerpProtocolError(
                f"frame type 0x{frame_type:02x} declares {length} bytes,"
                f" more than the {limit} allowed"
            )
        end = start + HEADER_LEN + length
        if len(buf) < end:
            return None
        self._pos = end
        return Frame(frame_type, bytes(buf[start + HEADER_LEN : end]))

    @property
    def buffered(self) -> int:
        return len(self._buf) - self._pos


def encode_frame(frame_type: int, payload: bytes = b"") -> bytes:
    if len(payload) > MAX_FRAME_SIZE:
        raise DerpLocalError(f"frame of {len(payload)} bytes is larger than any peer accepts")
    return bytes([frame_type]) + len(payload).to_bytes(4, "big") + payload


# --- NaCl box -----------------------------------------------------------------


_MAC_LEN = 16  # Poly1305 tag


def seal_box(private: NodePrivate, peer: NodePublic, message: bytes, nonce: bytes) -> bytes:
    """`nonce ‖ box(message)`, as tailscale's `key.NodePrivate.SealTo`."""
    if len(nonce) != NONCE_LEN:
        raise DerpLocalError(f"nonce must be {NONCE_LEN} bytes")
    return bytes(Box(PrivateKey(private.raw), PublicKey(peer.raw)).encrypt(message, nonce))


def open_box(private: NodePrivate, peer: NodePublic, sealed: bytes) -> bytes:
    if len(sealed) < NONCE_LEN + _MAC_LEN:
        raise DerpProtocolError("sealed message is too short")
    try:
        return bytes(Box(PrivateKey(private.raw), PublicKey(peer.raw)).decrypt(sealed))
    except CryptoError:
        raise DerpProtocolError("sealed message does not open with the claimed key") from None


# --- handshake documents ------------------------------------------------------------

# (JSON name, attribute, type, omitted when zero) in Go's struct order.
_Field = tuple[str, str, type, bool]


def _to_json(doc: object, fields: tuple[_Field, ...]) -> bytes:
    out: dict[str, Any] = {}
    for name, attr, _, omit_empty in fields:
        value = getattr(doc, attr)
        if value or not omit_empty:
            out[name] = value
    return json.dumps(out, separators=(",", ":")).encode()


def _from_json(data: bytes, fields: tuple[_Field, ...], what: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise DerpProtocolError(f"{what} is not valid JSON") from None
    if not isinstance(doc, dict):
        raise DerpProtocolError(f"{what} is not a JSON object")
    # Go's encoding/json matches field names case-insensitively; so do we.
    lowered = {str(k).lower(): v for k, v in doc.items()}
    values: dict[str, Any] = {}
    for name, attr, kind, _ in fields:
        value = lowered.get(name.lower())
        if value is None:
            continue
        if isinstance(value, bool) is not (kind is bool) or not isinstance(value, kind):
            raise DerpProtocolError(f"{what} field {name} has the wrong type")
        values[attr] = value
    return values


@dataclass(frozen=True, slots=True)
class ClientInfo:
    """The client's boxed JSON in its ClientInfo frame (derp_client.go `clientInfo`)."""

    version: int = 0
    can_ack_pings: bool = False
    mesh_key: str = ""
    is_prober: bool = False

    _FIELDS: ClassVar[tuple[_Field, ...]] = (
        ("version", "version", int, True),
        ("meshKey", "mesh_key", str, True),
        ("CanAckPings", "can_ack_pings", bool, False),
        ("IsProber", "is_prober", bool, True),
    )

    def to_json(self) -> bytes:
        return _to_json(self, self._FIELDS)

    @classmethod
    def from_json(cls, data: bytes) -> ClientInfo:
        return cls(**_from_json(data, cls._FIELDS, "client info"))


@dataclass(frozen=True, slots=True)
class ServerInfo:
    """The server's boxed JSON in its ServerInfo frame; zero means "unspecified"."""

    version: int = PROTOCOL_VERSION
    token_bucket_bytes_per_second: int = 0
    token_bucket_bytes_burst: int = 0

    _FIELDS: ClassVar[tuple[_Field, ...]] = (
        ("version", "version", int, True),
        ("TokenBucketBytesPerSecond", "token_bucket_bytes_per_second", int, True),
        ("TokenBucketBytesBurst", "token_bucket_bytes_burst", int, True),
    )

    def to_json(self) -> bytes:
        return _to_json(self, self._FIELDS)

    @classmethod
    def from_json(cls, data: bytes) -> ServerInfo:
        # A missing version is version 0, not ours.
        return cls(**{"version": 0, **_from_json(data, cls._FIELDS, "server info")})


# --- frame encoders and payload parsers -----------------------------------------------


def server_key_frame(server: NodePublic) -> bytes:
    return encode_frame(FrameType.SERVER_KEY, MAGIC + server.raw)


def parse_server_key(payload: bytes) -> NodePublic:
    # Extra bytes after the key are reserved for future use (derp_client.go recvServerKey).
    if len(payload) < len(MAGIC) + KEY_LEN or not payload.startswith(MAGIC):
        raise DerpProtocolError("invalid server greeting")
    return NodePublic(payload[len(MAGIC) : len(MAGIC) + KEY_LEN])


def client_info_frame(
    client: NodePrivate, server: NodePublic, info: ClientInfo, nonce: bytes
) -> bytes:
    sealed = seal_box(client, server, info.to_json(), nonce)
    return encode_frame(FrameType.CLIENT_INFO, client.public().raw + sealed)


def parse_client_info(server: NodePrivate, payload: bytes) -> tuple[NodePublic, ClientInfo]:
    if len(payload) < KEY_LEN + NONCE_LEN:
        raise DerpProtocolError("client info frame is too short")
    client = NodePublic(payload[:KEY_LEN])
    return client, ClientInfo.from_json(open_box(server, client, payload[KEY_LEN:]))


def server_info_frame(
    server: NodePrivate, client: NodePublic, nonce: bytes, info: ServerInfo = ServerInfo()
) -> bytes:
    return encode_frame(FrameType.SERVER_INFO, seal_box(server, client, info.to_json(), nonce))


def parse_server_info(client: NodePrivate, server: NodePublic, payload: bytes) -> ServerInfo:
    return ServerInfo.from_json(open_box(client, server, payload))


def _packet_frame(frame_type: FrameType, key: NodePublic, packet: bytes) -> bytes:
    if len(packet) > MAX_PACKET_SIZE:
        raise DerpLocalError(f"packet of {len(packet)} bytes is over the {MAX_PACKET_SIZE} limit")
    return encode_frame(frame_type, key.raw + packet)


def send_packet_frame(dst: NodePublic, packet: bytes) -> bytes:
    return _packet_frame(FrameType.SEND_PACKET, dst, packet)


def recv_packet_frame(src: NodePublic, packet: bytes) -> bytes:
    return _packet_frame(FrameType.RECV_PACKET, src, packet)


def split_key(payload: bytes) -> tuple[NodePublic, bytes]:
    """Key ‖ packet, the payload of SendPacket and RecvPacket."""
    if len(payload) < KEY_LEN:
        raise DerpProtocolError("packet frame is shorter than a key")
    return NodePublic(payload[:KEY_LEN]), payload[KEY_LEN:]


def keep_alive_frame() -> bytes:
    return encode_frame(FrameType.KEEP_ALIVE)


def note_preferred_frame(preferred: bool) -> bytes:
    return encode_frame(FrameType.NOTE_PREFERRED, b"\x01" if preferred else b"\x00")


def peer_gone_frame(peer: NodePublic, reason: PeerGoneReason) -> bytes:
    return encode_frame(FrameType.PEER_GONE, peer.raw + bytes([reason]))


def parse_peer_gone(payload: bytes) -> tuple[NodePublic, PeerGoneReason]:
    if len(payload) < KEY_LEN:
        raise DerpProtocolError("peer gone frame is shorter than a key")
    # Old servers send no reason byte; it then means "disconnected".
    reason = payload[KEY_LEN] if len(payload) > KEY_LEN else 0
    try:
        return NodePublic(payload[:KEY_LEN]), PeerGoneReason(reason)
    except ValueError:
        raise DerpProtocolError(f"unknown peer gone reason {reason}") from None


_IPPORT_LEN = 18  # 16-byte IP (v4 mapped into v6) and a 2-byte big-endian port


def peer_present_frame(peer: NodePublic, flags: int = PeerPresentFlags.IS_REGULAR) -> bytes:
    """A mesh watcher learns `peer` is connected here. The address is zero:
    a mesh peer needs only the key (derpserver sends the client's ip:port)."""
    return encode_frame(FrameType.PEER_PRESENT, peer.raw + bytes(_IPPORT_LEN) + bytes([flags]))


def parse_peer_present(payload: bytes) -> tuple[NodePublic, int]:
    """Key and flags; old servers send the key alone, then the address without flags."""
    if len(payload) < KEY_LEN:
        raise DerpProtocolError("peer present frame is shorter than a key")
    flags = payload[KEY_LEN + _IPPORT_LEN] if len(payload) > KEY_LEN + _IPPORT_LEN else 0
    return NodePublic(payload[:KEY_LEN]), flags


def watch_conns_frame() -> bytes:
    return encode_frame(FrameType.WATCH_CONNS)


def forward_packet_frame(src: NodePublic, dst: NodePublic, packet: bytes) -> bytes:
    if len(packet) > MAX_PACKET_SIZE:
        raise DerpLocalError(f"packet of {len(packet)} bytes is over the {MAX_PACKET_SIZE} limit")
    return encode_frame(FrameType.FORWARD_PACKET, src.raw + dst.raw + packet)


def parse_forward_packet(payload: bytes) -> tuple[NodePublic, NodePublic, bytes]:
    if len(payload) < 2 * KEY_LEN:
        raise DerpProtocolError("forward packet frame is shorter than two keys")
    return (
        NodePublic(payload[:KEY_LEN]),
        NodePublic(payload[KEY_LEN : 2 * KEY_LEN]),
        payload[2 * KEY_LEN :],
    )


def mesh_key_matches(ours: str | None, theirs: str) -> bool:
    """Constant-time comparison; no mesh key here means no mesh peers."""
    if not ours:
        return False
    return hmac.compare_digest(ours.encode(), theirs.encode())


def _ping_payload(data: bytes) -> bytes:
    if len(data) != PING_LEN:
        raise DerpLocalError(f"ping data must be {PING_LEN} bytes")
    return data


def ping_frame(data: bytes) -> bytes:
    return encode_frame(FrameType.PING, _ping_payload(data))


def pong_frame(data: bytes) -> bytes:
    return encode_frame(FrameType.PONG, _ping_payload(data))


def health_frame(problem: str) -> bytes:
    """An empty problem clears the client's warning."""
    return encode_frame(FrameType.HEALTH, problem.encode())


def restarting_frame(reconnect_in_ms: int, try_for_ms: int) -> bytes:
    return encode_frame(
        FrameType.RESTARTING, reconnect_in_ms.to_bytes(4, "big") + try_for_ms.to_bytes(4, "big")
    )


def looks_like_disco(packet: bytes) -> bool:
    """Whether a relayed packet is a disco message (magic ‖ 32-byte key ‖ 24-byte nonce ‖ box)."""
    return len(packet) >= len(DISCO_MAGIC) + KEY_LEN + NONCE_LEN and packet.startswith(DISCO_MAGIC)


# --- server side of one connection -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClientHello:
    """The client proved it holds `key`; admit it with `accept()` or refuse with `reject()`."""

    key: NodePublic
    info: ClientInfo


class SendPacket(NamedTuple):
    """One per relayed packet: a named tuple, as `Frame` is, for its cost."""

    dst: NodePublic
    packet: bytes


@dataclass(frozen=True, slots=True)
class Ping:
    data: bytes


@dataclass(frozen=True, slots=True)
class Pong:
    data: bytes


@dataclass(frozen=True, slots=True)
class NotePreferred:
    preferred: bool


@dataclass(frozen=True, slots=True)
class WatchConns:
    """A mesh peer subscribes to who connects here and who leaves."""


@dataclass(frozen=True, slots=True)
class ForwardPacket:
    """A mesh peer hands over a packet from its client `src` for `dst` here."""

    src: NodePublic
    dst: NodePublic
    packet: bytes


@dataclass(frozen=True, slots=True)
class ClosePeer:
    """A mesh peer asks to close `peer`'s connection here."""

    peer: NodePublic


Event = (
    ClientHello | SendPacket | Ping | Pong | NotePreferred | WatchConns | ForwardPacket | ClosePeer
)


class ConnState(Enum):
    AWAIT_CLIENT_INFO = "await-client-info"
    AWAIT_ADMISSION = "await-admission"
    ESTABLISHED = "established"
    CLOSED = "closed"


class _Input(Enum):
    CLIENT_INFO = "client-info frame"  # remote
    FRAME = "steady-state frame"  # remote
    TIMER = "timer"
    ACCEPT = "accept"  # local
    REJECT = "reject"  # local
    SEND = "send"  # local
    CLOSE = "close"  # local


_S, _I = ConnState, _Input
# (state, input) -> next state. A missing pair is a protocol violation for
# remote inputs and API misuse for local ones. Timers in the handshake close
# the connection only once the deadline passed; handle_timer checks that.
TRANSITIONS: dict[tuple[ConnState, _Input], ConnState] = {
    (_S.AWAIT_CLIENT_INFO, _I.CLIENT_INFO): _S.AWAIT_ADMISSION,
    (_S.AWAIT_CLIENT_INFO, _I.TIMER): _S.CLOSED,
    (_S.AWAIT_CLIENT_INFO, _I.CLOSE): _S.CLOSED,
    # The client does not wait for ServerInfo before talking; its frames are
    # reported in order after ClientHello and the caller decides first.
    (_S.AWAIT_ADMISSION, _I.FRAME): _S.AWAIT_ADMISSION,
    (_S.AWAIT_ADMISSION, _I.CLIENT_INFO): _S.AWAIT_ADMISSION,
    (_S.AWAIT_ADMISSION, _I.ACCEPT): _S.ESTABLISHED,
    (_S.AWAIT_ADMISSION, _I.REJECT): _S.CLOSED,
    (_S.AWAIT_ADMISSION, _I.TIMER): _S.CLOSED,
    (_S.AWAIT_ADMISSION, _I.CLOSE): _S.CLOSED,
    # tailscale's server skips a repeated ClientInfo like any unknown frame.
    (_S.ESTABLISHED, _I.CLIENT_INFO): _S.ESTABLISHED,
    (_S.ESTABLISHED, _I.FRAME): _S.ESTABLISHED,
    (_S.ESTABLISHED, _I.TIMER): _S.ESTABLISHED,
    (_S.ESTABLISHED, _I.SEND): _S.ESTABLISHED,
    (_S.ESTABLISHED, _I.CLOSE): _S.CLOSED,
    (_S.CLOSED, _I.CLIENT_INFO): _S.CLOSED,
    (_S.CLOSED, _I.FRAME): _S.CLOSED,
    (_S.CLOSED, _I.TIMER): _S.CLOSED,
    (_S.CLOSED, _I.CLOSE): _S.CLOSED,
}
_REMOTE = frozenset({_I.CLIENT_INFO, _I.FRAME})
_MAX_DSTS = 1024  # remembered destination keys per connection
_SEND, _RECV = int(FrameType.SEND_PACKET), int(FrameType.RECV_PACKET)
_MESH_ONLY = frozenset({FrameType.FORWARD_PACKET, FrameType.WATCH_CONNS, FrameType.CLOSE_PEER})


class DerpConnection:
    """The server side of one client connection, after the HTTP upgrade.

    ServerKey is queued on construction. `receive_data` returns events;
    `accept`/`reject` answer the ClientHello; `send_*` queue frames;
    `data_to_send` hands the queued bytes to the I/O layer. Time comes in
    through `now` and `handle_timer`; randomness (the box nonce) through `rng`.
    """

    def __init__(
        self,
        server_key: NodePrivate,
        *,
        rng: Callable[[int], bytes],
        now: float,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        keepalive_interval: float = KEEPALIVE_INTERVAL,
        mesh_key: str | None = None,
    ) -> None:
        self._key = server_key
        self._mesh_key = mesh_key
        self.can_mesh = False  # the client showed our mesh key: another server of the region
        self._rng = rng
        self._keepalive_interval = keepalive_interval
        self._deadline = now + handshake_timeout
        self._next_keepalive = 0.0  # set by accept()
        self._decoder = FrameDecoder(self._limit)
        self._out = bytearray(server_key_frame(server_key.public()))
        self.state = ConnState.AWAIT_CLIENT_INFO
        self.client: NodePublic | None = None
        self.unknown_frames = 0
        # The keys this client sends to, so each packet reuses one key object
        # (the relay's routing caches compare them by identity).
        self._dsts: dict[bytes, NodePublic] = {}

    def _step(self, given: _Input) -> ConnState:
        nxt = TRANSITIONS.get((self.state, given))
        if nxt is None:
            if given in _REMOTE:
                raise DerpProtocolError(f"unexpected {given.value} while {self.state.value}")
            raise DerpLocalError(f"cannot {given.value} while {self.state.value}")
        self.state = nxt
        return nxt

    def _limit(self, frame_type: int) -> int:
        if self.state is ConnState.AWAIT_CLIENT_INFO and frame_type != FrameType.CLIENT_INFO:
            raise DerpProtocolError("the client must send its key before anything else")
        return frame_limit(frame_type)

    @property
    def is_open(self) -> bool:
        return self.state is not ConnState.CLOSED

    def receive_data(self, data: bytes) -> list[Event]:
        if not self.is_open:
            return []
        self._decoder.feed(data)
        events: list[Event] = []
        while self.is_open:
            frame = self._decoder.next_frame()
            if frame is None:
                break
            event = self._handle_frame(frame)
            if event is not None:
                events.append(event)
        return events

    def _handle_frame(self, frame: Frame) -> Event | None:
        if frame.type == _SEND and self.state is ConnState.ESTABLISHED:
            # The relay's hot path; (ESTABLISHED, FRAME) stays ESTABLISHED.
            payload = frame.payload
            if len(payload) < KEY_LEN:
                raise DerpProtocolError("packet frame is shorter than a key")
            raw = payload[:KEY_LEN]
            dst = self._dsts.get(raw)
            if dst is None:
                if len(self._dsts) >= _MAX_DSTS:
                    self._dsts.clear()
                dst = self._dsts[raw] = NodePublic(raw)
            return SendPacket(dst, payload[KEY_LEN:])
        if frame.type == FrameType.CLIENT_INFO:
            first = self.state is ConnState.AWAIT_CLIENT_INFO
            self._step(_I.CLIENT_INFO)
            if not first:
                return None
            key, info = parse_client_info(self._key, frame.payload)
            self.client = key
            self.can_mesh = mesh_key_matches(self._mesh_key, info.mesh_key)
            return ClientHello(key, info)
        self._step(_I.FRAME)
        payload = frame.payload
        match frame.type:
            case FrameType.SEND_PACKET:
                dst, packet = split_key(payload)
                return SendPacket(dst, packet)
            case FrameType.PING:
                if len(payload) < PING_LEN:
                    raise DerpProtocolError("ping frame is shorter than 8 bytes")
                return Ping(payload[:PING_LEN])
            case FrameType.PONG:
                return Pong(payload[:PING_LEN])
            case FrameType.NOTE_PREFERRED:
                if len(payload) != 1:
                    raise DerpProtocolError("note-preferred frame must be 1 byte")
                return NotePreferred(payload != b"\x00")
            case t if t in _MESH_ONLY and not self.can_mesh:
                raise DerpProtocolError("mesh frames need the mesh key")
            case FrameType.WATCH_CONNS:
                return WatchConns()
            case FrameType.FORWARD_PACKET:
                return ForwardPacket(*parse_forward_packet(payload))
            case FrameType.CLOSE_PEER:
                if len(payload) < KEY_LEN:
                    raise DerpProtocolError("close peer frame is shorter than a key")
                return ClosePeer(NodePublic(payload[:KEY_LEN]))
        self.unknown_frames += 1
        return None

    def accept(self, now: float, info: ServerInfo = ServerInfo()) -> None:
        self._step(_I.ACCEPT)
        assert self.client is not None
        self._out += server_info_frame(self._key, self.client, self._rng(NONCE_LEN), info)
        self._next_keepalive = now + self._keepalive_interval

    def reject(self) -> None:
        self._step(_I.REJECT)

    def close(self) -> None:
        self._step(_I.CLOSE)

    def _send(self, frame: bytes) -> None:
        self._step(_I.SEND)
        self._out += frame

    def send_packet(self, src: NodePublic, packet: bytes) -> None:
        self._send(recv_packet_frame(src, packet))

    def send_packets(self, packets: Iterable[tuple[NodePublic, bytes]]) -> int:
        """Queue a RecvPacket frame per (source, packet), each copied once; how many."""
        self._step(_I.SEND)
        out, pack, n = self._out, _HEADER.pack, 0
        for src, packet in packets:
            if len(packet) > MAX_PACKET_SIZE:
                raise DerpLocalError(
                    f"packet of {len(packet)} bytes is over the {MAX_PACKET_SIZE} limit"
                )
            out += pack(_RECV, KEY_LEN + len(packet))
            out += src.raw
            out += packet
            n += 1
        return n

    def send_pong(self, data: bytes) -> None:
        self._send(pong_frame(data))

    def send_peer_gone(self, peer: NodePublic, reason: PeerGoneReason) -> None:
        self._send(peer_gone_frame(peer, reason))

    def send_peer_present(self, peer: NodePublic) -> None:
        self._send(peer_present_frame(peer))

    def send_health(self, problem: str) -> None:
        self._send(health_frame(problem))

    def get_timer(self) -> float | None:
        if self.state in (ConnState.AWAIT_CLIENT_INFO, ConnState.AWAIT_ADMISSION):
            return self._deadline
        if self.state is ConnState.ESTABLISHED:
            return self._next_keepalive
        return None

    def handle_timer(self, now: float) -> None:
        """Queue a keepalive when due; raise when the handshake deadline passed."""
        timer = self.get_timer()
        if timer is None or now < timer:
            return
        if self._step(_I.TIMER) is ConnState.CLOSED:
            raise DerpProtocolError("the client did not finish the handshake in time")
        self._out += keep_alive_frame()
        self._next_keepalive = now + self._keepalive_interval

    def data_to_send(self) -> bytes:
        data = bytes(self._out)
        self._out.clear()
        return data
