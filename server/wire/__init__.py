"""The control protocol's JSON, typed (tailcfg-shaped) and as built by the server.

`decode(T, value)` / `encode(value)` convert between decoded JSON and the
frozen wire types; `limits` holds every bound a request is checked against.
The builders (`derp_map_json`, `dns_config_json`, ...) make the parts of a
MapResponse this server sends.
"""

from server.wire import limits
from server.wire._codec import (
    AddrPort,
    Prefix,
    WireError,
    WireStruct,
    decode,
    decode_json,
    encode,
    encode_json,
)
from server.wire.builders import (
    TAGGED_LOGIN,
    TAGGED_USER_ID,
    ZERO_TIME,
    DerpRegion,
    canonical,
    derp_map_json,
    derp_region_json,
    dns_config_json,
    format_time,
    stable_user_id,
    user_profile_json,
)
from server.wire.hostinfo import Hostinfo, Location, NetInfo, Service, TPMInfo
from server.wire.netmap import (
    DERPHomeParams,
    DERPMap,
    DERPNode,
    DERPRegion,
    DNSConfig,
    DNSRecord,
    MapResponse,
    Node,
    Resolver,
    UserProfile,
)
from server.wire.requests import (
    Login,
    MapRequest,
    RegisterRequest,
    RegisterResponse,
    RegisterResponseAuth,
    User,
)

__all__ = [
    "TAGGED_LOGIN",
    "TAGGED_USER_ID",
    "ZERO_TIME",
    "AddrPort",
    "DERPHomeParams",
    "DERPMap",
    "DERPNode",
    "DERPRegion",
    "DNSConfig",
    "DNSRecord",
    "DerpRegion",
    "Hostinfo",
    "Location",
    "Login",
    "MapRequest",
    "MapResponse",
    "NetInfo",
    "Node",
    "Prefix",
    "RegisterRequest",
    "RegisterResponse",
    "RegisterResponseAuth",
    "Resolver",
    "Service",
    "TPMInfo",
    "User",
    "UserProfile",
    "WireError",
    "WireStruct",
    "canonical",
    "decode",
    "decode_json",
    "derp_map_json",
    "derp_region_json",
    "dns_config_json",
    "encode",
    "encode_json",
    "format_time",
    "limits",
    "stable_user_id",
    "user_profile_json",
]
