"""What the server sends in a MapResponse: Node, DERPMap, DNSConfig
(tailcfg/tailcfg.go, tailcfg/derpmap.go, types/dnstype; protocol.md §5, §6, §11).

Within one map stream a field left out (None) means "unchanged" and an empty
list or map means "now none" (e.g. `PacketFilter: []` blocks everything), so
every list or map here is `... | None`. Parts this server builds elsewhere as
plain JSON (packet filters, SSH policy, cap-map values, ping requests) are
carried as `Any`: decoded JSON, passed through unchanged.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from msgspec import field

from server.protocol.keys import DiscoPublic, MachinePublic, NodePublic
from server.wire._codec import AddrPort, Prefix, WireStruct
from server.wire.hostinfo import Hostinfo

__all__ = [
    "DERPHomeParams",
    "DERPMap",
    "DERPNode",
    "DERPRegion",
    "DNSConfig",
    "DNSRecord",
    "MapResponse",
    "Node",
    "Resolver",
    "UserProfile",
]


class Resolver(WireStruct, frozen=True):
    addr: str = field(name="Addr", default="")
    bootstrap_resolution: tuple[str, ...] | None = field(name="BootstrapResolution", default=None)
    use_with_exit_node: bool = field(name="UseWithExitNode", default=False)


class DNSRecord(WireStruct, frozen=True):
    name: str = field(name="Name", default="")
    type: str = field(name="Type", default="")
    value: str = field(name="Value", default="")


class DNSConfig(WireStruct, frozen=True):
    resolvers: tuple[Resolver, ...] | None = field(name="Resolvers", default=None)
    # An empty list for a suffix means "answer it from 100.100.100.100".
    routes: dict[str, tuple[Resolver, ...] | None] | None = field(name="Routes", default=None)
    fallback_resolvers: tuple[Resolver, ...] | None = field(name="FallbackResolvers", default=None)
    domains: tuple[str, ...] | None = field(name="Domains", default=None)
    proxied: bool = field(name="Proxied", default=False)
    nameservers: tuple[str, ...] | None = field(name="Nameservers", default=None)
    cert_domains: tuple[str, ...] | None = field(name="CertDomains", default=None)
    extra_records: tuple[DNSRecord, ...] | None = field(name="ExtraRecords", default=None)
    exit_node_filtered_set: tuple[str, ...] | None = field(name="ExitNodeFilteredSet", default=None)


class DERPNode(WireStruct, frozen=True):
    name: str = field(name="Name", default="")
    region_id: int = field(name="RegionID", default=0)
    host_name: str = field(name="HostName", default="")
    cert_name: str = field(name="CertName", default="")
    ipv4: str = field(name="IPv4", default="")  # an address, or "none"
    ipv6: str = field(name="IPv6", default="")
    stun_port: int = field(name="STUNPort", default=0)  # 0 = 3478, -1 = no STUN
    stun_only: bool = field(name="STUNOnly", default=False)
    derp_port: int = field(name="DERPPort", default=0)  # 0 = 443
    insecure_for_tests: bool = field(name="InsecureForTests", default=False)
    stun_test_ip: str = field(name="STUNTestIP", default="")
    can_port80: bool = field(name="CanPort80", default=False)


class DERPRegion(WireStruct, frozen=True):
    region_id: int = field(name="RegionID", default=0)
    region_code: str = field(name="RegionCode", default="")
    region_name: str = field(name="RegionName", default="")
    latitude: float = field(name="Latitude", default=0.0)
    longitude: float = field(name="Longitude", default=0.0)
    avoid: bool = field(name="Avoid", default=False)
    no_measure_no_home: bool = field(name="NoMeasureNoHome", default=False)
    nodes: tuple[DERPNode, ...] | None = field(name="Nodes", default=None)


class DERPHomeParams(WireStruct, frozen=True):
    region_score: dict[str, float] | None = field(name="RegionScore", default=None)


class DERPMap(WireStruct, frozen=True):
    home_params: DERPHomeParams | None = field(name="HomeParams", default=None)
    # Keyed by region ID in decimal text, as Go marshals map[int]*DERPRegion.
    # None with HomeParams set: only the params changed.
    regions: dict[str, DERPRegion] | None = field(name="Regions", default=None)
    omit_default_regions: bool = field(name="omitDefaultRegions", default=False)


class UserProfile(WireStruct, frozen=True):
    id: int = field(name="ID", default=0)
    login_name: str = field(name="LoginName", default="")
    display_name: str = field(name="DisplayName", default="")
    profile_pic_url: str = field(name="ProfilePicURL", default="")


class Node(WireStruct, frozen=True):
    """A node as a map shows it: the self node or a peer (protocol.md §5.2)."""

    id: int = field(name="ID", default=0)
    stable_id: str = field(name="StableID", default="")
    name: str = field(name="Name", default="")  # FQDN with a trailing dot
    user: int = field(name="User", default=0)
    sharer: int = field(name="Sharer", default=0)
    key: NodePublic = field(name="Key", default=NodePublic.zero())
    key_expiry: datetime | None = field(name="KeyExpiry", default=None)  # None: never
    key_signature: bytes | None = field(name="KeySignature", default=None)
    machine: MachinePublic = field(name="Machine", default=MachinePublic.zero())
    disco_key: DiscoPublic = field(name="DiscoKey", default=DiscoPublic.zero())
    addresses: tuple[Prefix, ...] | None = field(name="Addresses", default=None)
    # None means the same as Addresses (capver >= 112).
    allowed_ips: tuple[Prefix, ...] | None = field(name="AllowedIPs", default=None)
    endpoints: tuple[AddrPort, ...] | None = field(name="Endpoints", default=None)
    legacy_derp: str = field(name="DERP", default="")  # "127.3.3.40:<region>"
    home_derp: int = field(name="HomeDERP", default=0)
    hostinfo: Hostinfo | None = field(name="Hostinfo", default=None)
    created: datetime | None = field(name="Created", default=None)
    cap: int = field(name="Cap", default=0)
    tags: tuple[str, ...] | None = field(name="Tags", default=None)
    primary_routes: tuple[Prefix, ...] | None = field(name="PrimaryRoutes", default=None)
    last_seen: datetime | None = field(name="LastSeen", default=None)
    online: bool | None = field(name="Online", default=None)  # None: unknown
    machine_authorized: bool = field(name="MachineAuthorized", default=False)
    capabilities: tuple[str, ...] | None = field(name="Capabilities", default=None)
    cap_map: dict[str, tuple[Any, ...] | None] | None = field(name="CapMap", default=None)
    unsigned_peer_api_only: bool = field(name="UnsignedPeerAPIOnly", default=False)
    computed_name: str = field(name="ComputedName", default="")
    computed_name_with_host: str = field(name="ComputedNameWithHost", default="")
    data_plane_audit_log_id: str = field(name="DataPlaneAuditLogID", default="")
    expired: bool = field(name="Expired", default=False)
    self_node_v4_masq_addr_for_this_peer: str | None = field(
        name="SelfNodeV4MasqAddrForThisPeer", default=None
    )
    self_node_v6_masq_addr_for_this_peer: str | None = field(
        name="SelfNodeV6MasqAddrForThisPeer", default=None
    )
    is_wire_guard_only: bool = field(name="IsWireGuardOnly", default=False)
    is_jailed: bool = field(name="IsJailed", default=False)
    exit_node_dns_resolvers: tuple[Resolver, ...] | None = field(
        name="ExitNodeDNSResolvers", default=None
    )


class MapResponse(WireStruct, frozen=True):
    map_session_handle: str = field(name="MapSessionHandle", default="")
    seq: int = field(name="Seq", default=0)
    keep_alive: bool = field(name="KeepAlive", default=False)
    ping_request: Any = field(name="PingRequest", default=None)
    pop_browser_url: str = field(name="PopBrowserURL", default="")
    node: Node | None = field(name="Node", default=None)  # required in a stream's first message
    derp_map: DERPMap | None = field(name="DERPMap", default=None)
    # Non-empty: the complete list. Empty or absent: not a full list.
    peers: tuple[Node, ...] | None = field(name="Peers", default=None)
    peers_changed: tuple[Node, ...] | None = field(name="PeersChanged", default=None)
    peers_removed: tuple[int, ...] | None = field(name="PeersRemoved", default=None)
    peers_changed_patch: tuple[Any, ...] | None = field(name="PeersChangedPatch", default=None)
    # Keyed by node ID in decimal text, as Go marshals map[NodeID]bool.
    peer_seen_change: dict[str, bool] | None = field(name="PeerSeenChange", default=None)
    online_change: dict[str, bool] | None = field(name="OnlineChange", default=None)
    dns_config: DNSConfig | None = field(name="DNSConfig", default=None)
    domain: str = field(name="Domain", default="")  # "" = unchanged
    collect_services: bool | None = field(name="CollectServices", default=None)
    packet_filter: tuple[Any, ...] | None = field(name="PacketFilter", default=None)
    packet_filters: dict[str, tuple[Any, ...] | None] | None = field(
        name="PacketFilters", default=None
    )
    user_profiles: tuple[UserProfile, ...] | None = field(name="UserProfiles", default=None)
    health: tuple[str, ...] | None = field(name="Health", default=None)
    display_messages: dict[str, Any] | None = field(name="DisplayMessages", default=None)
    ssh_policy: Any = field(name="SSHPolicy", default=None)
    control_time: datetime | None = field(name="ControlTime", default=None)
    tka_info: Any = field(name="TKAInfo", default=None)
    domain_data_plane_audit_log_id: str = field(name="DomainDataPlaneAuditLogID", default="")
    debug: Any = field(name="Debug", default=None)
    control_dial_plan: Any = field(name="ControlDialPlan", default=None)
    client_version: Any = field(name="ClientVersion", default=None)
    default_auto_update: bool | None = field(name="DefaultAutoUpdate", default=None)
