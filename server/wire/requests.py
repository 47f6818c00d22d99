"""What a client sends to /machine/register and /machine/map, and the
register answer (tailcfg/tailcfg.go RegisterRequest, MapRequest,
RegisterResponse; protocol.md §4.1, §4.2)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from msgspec import Meta, field

from server.protocol.keys import DiscoPublic, NLPublic, NodePublic
from server.wire import limits as L
from server.wire._codec import ZERO_TIME, AddrPort, WireStruct, encode_json
from server.wire.hostinfo import Hostinfo, ShortList, Text

__all__ = [
    "Login",
    "MapRequest",
    "RegisterRequest",
    "RegisterResponse",
    "RegisterResponseAuth",
    "User",
]

_ZERO_NODE = NodePublic.zero()


def _check_hostinfo_size(hostinfo: Hostinfo | None) -> None:
    if hostinfo is not None:
        size = len(encode_json(hostinfo))
        if size > L.MAX_HOSTINFO_BYTES:
            raise ValueError(
                f"Hostinfo is {size} bytes encoded, more than the {L.MAX_HOSTINFO_BYTES} allowed"
            )


class RegisterResponseAuth(WireStruct, frozen=True):
    auth_key: Text = field(name="AuthKey", default="")
    # Oauth2Token: pre-1.66 Android only; not decoded (see the field test).


class RegisterRequest(WireStruct, frozen=True):
    version: int = field(name="Version", default=0)
    node_key: NodePublic = field(name="NodeKey", default=_ZERO_NODE)
    old_node_key: NodePublic = field(name="OldNodeKey", default=_ZERO_NODE)
    nl_key: NLPublic = field(name="NLKey", default=NLPublic.zero())
    auth: RegisterResponseAuth | None = field(name="Auth", default=None)
    # Go sends the zero time for "no request"; `requested_expiry` reads it.
    expiry: datetime = field(name="Expiry", default=ZERO_TIME)
    followup: Text = field(name="Followup", default="")
    hostinfo: Hostinfo | None = field(name="Hostinfo", default=None)
    ephemeral: bool = field(name="Ephemeral", default=False)
    node_key_signature: bytes | None = field(name="NodeKeySignature", default=None)
    signature_type: Text = field(name="SignatureType", default="")
    timestamp: datetime | None = field(name="Timestamp", default=None)
    device_cert: bytes | None = field(name="DeviceCert", default=None)
    signature: bytes | None = field(name="Signature", default=None)
    tailnet: Text = field(name="Tailnet", default="")

    def __post_init__(self) -> None:
        _check_hostinfo_size(self.hostinfo)

    @property
    def requested_expiry(self) -> datetime | None:
        """The expiry the client asks for, or None (Go's zero time: no request)."""
        return None if self.expiry.year <= 1 else self.expiry


class MapRequest(WireStruct, frozen=True):
    version: int = field(name="Version", default=0)
    compress: Text = field(name="Compress", default="")
    keep_alive: bool = field(name="KeepAlive", default=False)
    node_key: NodePublic = field(name="NodeKey", default=_ZERO_NODE)
    disco_key: DiscoPublic | None = field(name="DiscoKey", default=None)
    hardware_attestation_key: Text = field(name="HardwareAttestationKey", default="")
    hardware_attestation_key_signature: bytes | None = field(
        name="HardwareAttestationKeySignature", default=None
    )
    stream: bool = field(name="Stream", default=False)
    hostinfo: Hostinfo | None = field(name="Hostinfo", default=None)
    map_session_handle: Text = field(name="MapSessionHandle", default="")
    map_session_seq: int = field(name="MapSessionSeq", default=0)
    # Absent means none (protocol.md §4.2.1); kept apart from [] all the same.
    endpoints: Annotated[tuple[AddrPort, ...], Meta(max_length=L.MAX_ENDPOINTS)] | None = field(
        name="Endpoints", default=None
    )
    endpoint_types: Annotated[tuple[int, ...], Meta(max_length=L.MAX_ENDPOINTS)] | None = field(
        name="EndpointTypes", default=None
    )
    tka_head: Text = field(name="TKAHead", default="")
    read_only: bool = field(name="ReadOnly", default=False)
    omit_peers: bool = field(name="OmitPeers", default=False)
    debug_flags: ShortList | None = field(name="DebugFlags", default=None)
    connection_handle_for_test: Text = field(name="ConnectionHandleForTest", default="")

    def __post_init__(self) -> None:
        _check_hostinfo_size(self.hostinfo)


class User(WireStruct, frozen=True):
    id: int = field(name="ID", default=0)
    display_name: str = field(name="DisplayName", default="")
    profile_pic_url: str = field(name="ProfilePicURL", default="")
    created: datetime | None = field(name="Created", default=None)


class Login(WireStruct, frozen=True):
    id: int = field(name="ID", default=0)
    provider: str = field(name="Provider", default="")
    login_name: str = field(name="LoginName", default="")
    display_name: str = field(name="DisplayName", default="")
    profile_pic_url: str = field(name="ProfilePicURL", default="")


class RegisterResponse(WireStruct, frozen=True):
    user: User = field(name="User", default=User())
    login: Login = field(name="Login", default=Login())
    node_key_expired: bool = field(name="NodeKeyExpired", default=False)
    machine_authorized: bool = field(name="MachineAuthorized", default=False)
    auth_url: str = field(name="AuthURL", default="")
    node_key_signature: bytes | None = field(name="NodeKeySignature", default=None)
    error: str = field(name="Error", default="")
