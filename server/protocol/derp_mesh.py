"""The client side of a DERP mesh connection, sans-IO.

One server of a region connects to each other one as a client that shows the
mesh key, asks to watch connections (`WatchConns`), learns who is connected
there (`PeerPresent` / `PeerGone`) and hands over packets for them
(`ForwardPacket`), as tailscale's `derp/derphttp` mesh client and
`cmd/derper/mesh.go` do. Bytes after the HTTP upgrade in, bytes out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from server.protocol.derp import (
    NONCE_LEN,
    PING_LEN,
    ClientInfo,
    DerpProtocolError,
    FrameDecoder,
    FrameType,
    PeerGoneReason,
    client_info_frame,
    forward_packet_frame,
    parse_peer_gone,
    parse_peer_present,
    parse_server_info,
    parse_server_key,
    pong_frame,
    watch_conns_frame,
)
from server.protocol.keys import NodePrivate, NodePublic

__all__ = ["MeshClient", "MeshEvent", "PeerGone", "PeerPresent", "Watching"]


@dataclass(frozen=True, slots=True)
class Watching:
    """The server accepted us; presence frames follow."""

    server: NodePublic


@dataclass(frozen=True, slots=True)
class PeerPresent:
    peer: NodePublic


@dataclass(frozen=True, slots=True)
class PeerGone:
    peer: NodePublic
    reason: PeerGoneReason


MeshEvent = Watching | PeerPresent | PeerGone


class _State(Enum):
    AWAIT_SERVER_KEY = "await-server-key"
    AWAIT_SERVER_INFO = "await-server-info"
    WATCHING = "watching"


class MeshClient:
    def __init__(self, key: NodePrivate, mesh_key: str, *, rng: Callable[[int], bytes]) -> None:
        self._key = key
        self._mesh_key = mesh_key
        self._rng = rng
        self._decoder = FrameDecoder()
        self._out = bytearray()
        self._state = _State.AWAIT_SERVER_KEY
        self.server: NodePublic | None = None

    @property
    def watching(self) -> bool:
        return self._state is _State.WATCHING

    def receive_data(self, data: bytes) -> list[MeshEvent]:
        events: list[MeshEvent] = []
        for frame in self._decoder.receive_data(data):
            event = self._handle(frame.type, frame.payload)
            if event is not None:
                events.append(event)
        return events

    def _handle(self, frame_type: int, payload: bytes) -> MeshEvent | None:
        if self._state is _State.AWAIT_SERVER_KEY:
            if frame_type != FrameType.SERVER_KEY:
                raise DerpProtocolError("the server did not start with its key")
            self.server = parse_server_key(payload)
            info = ClientInfo(version=2, can_ack_pings=True, mesh_key=self._mesh_key)
            self._out += client_info_frame(self._key, self.server, info, self._rng(NONCE_LEN))
            self._state = _State.AWAIT_SERVER_INFO
            return None
        assert self.server is not None
        if self._state is _State.AWAIT_SERVER_INFO:
            if frame_type != FrameType.SERVER_INFO:
                raise DerpProtocolError("the server did not answer with its info")
            parse_server_info(self._key, self.server, payload)
            self._out += watch_conns_frame()
            self._state = _State.WATCHING
            return Watching(self.server)
        match frame_type:
            case FrameType.PEER_PRESENT:
                return PeerPresent(parse_peer_present(payload)[0])
            case FrameType.PEER_GONE:
                return PeerGone(*parse_peer_gone(payload))
            case FrameType.PING:
                if len(payload) < PING_LEN:
                    raise DerpProtocolError("ping frame is shorter than 8 bytes")
                self._out += pong_frame(payload[:PING_LEN])
        return None  # keepalives, health and anything newer

    def forward(self, src: NodePublic, dst: NodePublic, packet: bytes) -> None:
        if not self.watching:
            raise DerpProtocolError("cannot forward before the mesh connection is up")
        self._out += forward_packet_frame(src, dst, packet)

    def data_to_send(self) -> bytes:
        data = bytes(self._out)
        self._out.clear()
        return data
