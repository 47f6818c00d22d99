"""Hostinfo, NetInfo and Service as the client reports them (tailcfg/tailcfg.go).

Field by field as tailcfg declares them. A Go `string` or `bool` with
`omitempty` is a Python `str = ""` / `bool = False` (absent and zero are the
same there); an `opt.Bool` is `bool | None` (None = not known); a pointer or a
slice is `... | None` so that absent (None) and empty (`()`) stay apart.
"""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta, field
from msgspec.structs import replace

from server.wire import limits as L
from server.wire._codec import Prefix, WireStruct

__all__ = ["Hostinfo", "Location", "NetInfo", "Service", "TPMInfo"]

Text = Annotated[str, Meta(max_length=L.MAX_TEXT)]
Hostname = Annotated[str, Meta(max_length=L.MAX_HOSTNAME)]
SSHHostKey = Annotated[str, Meta(max_length=L.MAX_SSH_HOST_KEY)]
Port = Annotated[int, Meta(ge=0, le=65535)]
ShortList = Annotated[tuple[Text, ...], Meta(max_length=L.MAX_SHORT_LIST)]


class Service(WireStruct, frozen=True):
    """A service the node offers: "tcp"/"udp" ports, or the peer API ("peerapi4",
    "peerapi6", "peerapi-dns-proxy"), which peers need to reach Taildrop."""

    proto: Text = field(name="Proto", default="")
    port: Port = field(name="Port", default=0)
    description: Text = field(name="Description", default="")


class NetInfo(WireStruct, frozen=True):
    """The host's network as magicsock sees it; sent only when it changed."""

    mapping_varies_by_dest_ip: bool | None = field(name="MappingVariesByDestIP", default=None)
    hair_pinning: bool | None = field(name="HairPinning", default=None)
    working_ipv6: bool | None = field(name="WorkingIPv6", default=None)
    os_has_ipv6: bool | None = field(name="OSHasIPv6", default=None)
    working_udp: bool | None = field(name="WorkingUDP", default=None)
    working_icmpv4: bool | None = field(name="WorkingICMPv4", default=None)
    have_port_map: bool = field(name="HavePortMap", default=False)
    upnp: bool | None = field(name="UPnP", default=None)
    pmp: bool | None = field(name="PMP", default=None)
    pcp: bool | None = field(name="PCP", default=None)
    preferred_derp: int = field(name="PreferredDERP", default=0)  # home region; 0 = unknown
    link_type: Text = field(name="LinkType", default="")
    derp_latency: Annotated[dict[Text, float], Meta(max_length=L.MAX_DERP_LATENCIES)] | None = (
        field(name="DERPLatency", default=None)
    )
    firewall_mode: Text = field(name="FirewallMode", default="")


class Location(WireStruct, frozen=True):
    country: Text = field(name="Country", default="")
    country_code: Text = field(name="CountryCode", default="")
    city: Text = field(name="City", default="")
    city_code: Text = field(name="CityCode", default="")
    latitude: float = field(name="Latitude", default=0.0)
    longitude: float = field(name="Longitude", default=0.0)
    priority: int = field(name="Priority", default=0)


class TPMInfo(WireStruct, frozen=True):
    manufacturer: Text = field(name="Manufacturer", default="")
    vendor: Text = field(name="Vendor", default="")
    model: int = field(name="Model", default=0)
    firmware_version: int = field(name="FirmwareVersion", default=0)
    spec_revision: int = field(name="SpecRevision", default=0)


class Hostinfo(WireStruct, frozen=True):
    """What a node says about itself; peers get it back in their maps."""

    ipn_version: Text = field(name="IPNVersion", default="")
    frontend_log_id: Text = field(name="FrontendLogID", default="")
    backend_log_id: Text = field(name="BackendLogID", default="")
    os: Text = field(name="OS", default="")
    os_version: Text = field(name="OSVersion", default="")
    container: bool | None = field(name="Container", default=None)
    env: Text = field(name="Env", default="")
    distro: Text = field(name="Distro", default="")
    distro_version: Text = field(name="DistroVersion", default="")
    distro_code_name: Text = field(name="DistroCodeName", default="")
    app: Text = field(name="App", default="")
    desktop: bool | None = field(name="Desktop", default=None)
    package: Text = field(name="Package", default="")
    device_model: Text = field(name="DeviceModel", default="")
    push_device_token: Text = field(name="PushDeviceToken", default="")
    hostname: Hostname = field(name="Hostname", default="")
    shields_up: bool = field(name="ShieldsUp", default=False)
    sharee_node: bool = field(name="ShareeNode", default=False)
    no_logs_no_support: bool = field(name="NoLogsNoSupport", default=False)
    wire_ingress: bool = field(name="WireIngress", default=False)
    ingress_enabled: bool = field(name="IngressEnabled", default=False)
    allows_update: bool = field(name="AllowsUpdate", default=False)
    machine: Text = field(name="Machine", default="")
    go_arch: Text = field(name="GoArch", default="")
    go_arch_var: Text = field(name="GoArchVar", default="")
    go_version: Text = field(name="GoVersion", default="")
    routable_ips: Annotated[tuple[Prefix, ...], Meta(max_length=L.MAX_ROUTABLE_IPS)] | None = field(
        name="RoutableIPs", default=None
    )
    request_tags: Annotated[tuple[Text, ...], Meta(max_length=L.MAX_REQUEST_TAGS)] | None = field(
        name="RequestTags", default=None
    )
    wol_macs: ShortList | None = field(name="WoLMACs", default=None)
    services: Annotated[tuple[Service, ...], Meta(max_length=L.MAX_SERVICES)] | None = field(
        name="Services", default=None
    )
    net_info: NetInfo | None = field(name="NetInfo", default=None)
    ssh_host_keys: (
        Annotated[tuple[SSHHostKey, ...], Meta(max_length=L.MAX_SSH_HOST_KEYS)] | None
    ) = field(name="sshHostKeys", default=None)
    cloud: Text = field(name="Cloud", default="")
    userspace: bool | None = field(name="Userspace", default=None)
    userspace_router: bool | None = field(name="UserspaceRouter", default=None)
    app_connector: bool | None = field(name="AppConnector", default=None)
    services_hash: Text = field(name="ServicesHash", default="")
    exit_node_id: Text = field(name="ExitNodeID", default="")
    location: Location | None = field(name="Location", default=None)
    tpm: TPMInfo | None = field(name="TPM", default=None)
    state_encrypted: bool | None = field(name="StateEncrypted", default=None)

    def keeping_net_info(self, previous: Hostinfo) -> Hostinfo:
        """This Hostinfo, with `previous`'s NetInfo if it has none: clients send
        NetInfo only when it changed (protocol.md §4.2.1)."""
        if self.net_info is not None or previous.net_info is None:
            return self
        return replace(self, net_info=previous.net_info)
