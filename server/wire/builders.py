"""tailcfg-shaped JSON for what the server sends: nodes, DERP map, DNS, users.

Field names follow Go's encoding of tailcfg (PascalCase unless tagged);
see ../shared/docs/protocol.md §5 and §12. `None` here means "leave the key
out" (unchanged / unknown to the client); an empty list is sent as `[]` and
means "none" — the distinction matters on the wire.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from ipaddress import ip_address
from typing import Any

__all__ = [
    "TAGGED_USER_ID",
    "DerpRegion",
    "derp_map_json",
    "derp_region_json",
    "dns_config_json",
    "format_time",
    "stable_user_id",
    "user_profile_json",
]

ZERO_TIME = "0001-01-01T00:00:00Z"
# Tailscale shows tagged nodes as owned by a "tagged-devices" pseudo-user.
TAGGED_USER_ID = 2147455555
TAGGED_LOGIN = "tagged-devices"


def format_time(when: datetime | None) -> str:
    if when is None:
        return ZERO_TIME
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")


@lru_cache(maxsize=65536)
def stable_user_id(name: str) -> int:
    """A user ID that never changes while the user's name does not.

    Users live in git, not in sqlite, so IDs are derived rather than stored:
    48 bits of a hash stays below 2^53 (JavaScript-safe, as tailcfg asks).
    """
    digest = hashlib.sha256(b"tailnetd-user:" + name.encode()).digest()
    return int.from_bytes(digest[:6], "big") or 1


@lru_cache(maxsize=65536)
def user_profile_json(
    name: str | None, email: str | None, display_name: str | None
) -> Mapping[str, Any]:
    """A UserProfile; cached and shared, so never mutated."""
    if name is None:
        return {"ID": TAGGED_USER_ID, "LoginName": TAGGED_LOGIN, "DisplayName": "Tagged Devices"}
    return {
        "ID": stable_user_id(name),
        "LoginName": email or name,
        "DisplayName": display_name or name,
    }


@dataclass(frozen=True, slots=True)
class DerpRegion:
    region_id: int
    region_code: str
    region_name: str
    host_name: str
    derp_port: int
    stun_port: int
    insecure_for_tests: bool = False
    # Other replicas' DERP servers (host, port), meshed with this one: more
    # nodes of the same region.
    replicas: tuple[tuple[str, int], ...] = ()


def derp_map_json(regions: Sequence[DerpRegion], extra: Sequence[Any] = ()) -> dict[str, Any]:
    """The DERPMap: the server's own regions, then `extra` (settings.yaml's
    `derp.regions`, gitctl DerpRegionSpec values)."""
    out: dict[str, Any] = {}
    for region in regions:
        hosts = ((region.host_name, region.derp_port), *region.replicas)
        out[str(region.region_id)] = {
            "RegionID": region.region_id,
            "RegionCode": region.region_code,
            "RegionName": region.region_name,
            "Nodes": [
                _derp_node(region, f"{region.region_id}{chr(ord('a') + i)}", host, port)
                for i, (host, port) in enumerate(hosts[:26])
            ],
        }
    for spec in extra:
        out[str(spec.region_id)] = derp_region_json(spec)
    return {"Regions": out, "omitDefaultRegions": True}


def _derp_node(region: DerpRegion, name: str, host: str, port: int) -> dict[str, Any]:
    node: dict[str, Any] = {
        "Name": name,
        "RegionID": region.region_id,
        "HostName": host,
        "DERPPort": port,
        "STUNPort": region.stun_port if region.stun_port else -1,
    }
    try:
        addr = ip_address(host)
    except ValueError:
        pass
    else:
        # Pin the family so clients don't try a DNS lookup of an IP literal.
        if addr.version == 4:
            node["IPv4"], node["IPv6"] = str(addr), "none"
        else:
            node["IPv4"], node["IPv6"] = "none", str(addr)
    if region.insecure_for_tests:
        node["InsecureForTests"] = True
    return node


def derp_region_json(spec: Any) -> dict[str, Any]:
    """One DERPRegion as tailcfg encodes it: zero values are left out
    (`omitempty`), so a STUNPort of 0 means the default 3478 and -1 none."""
    nodes = []
    for n in spec.nodes:
        node: dict[str, Any] = {"Name": n.name, "RegionID": n.region_id, "HostName": n.host_name}
        for key, value in (
            ("CertName", n.cert_name),
            ("IPv4", n.ipv4),
            ("IPv6", n.ipv6),
            ("STUNPort", n.stun_port),
            ("STUNOnly", n.stun_only),
            ("DERPPort", n.derp_port),
            ("CanPort80", n.can_port80),
        ):
            if value:
                node[key] = value
        nodes.append(node)
    region: dict[str, Any] = {
        "RegionID": spec.region_id,
        "RegionCode": spec.region_code,
        "RegionName": spec.region_name,
    }
    if spec.avoid:
        region["Avoid"] = True
    region["Nodes"] = nodes
    return region


def _resolvers(addrs: Iterable[str]) -> list[dict[str, Any]]:
    return [{"Addr": a} for a in addrs]


def dns_config_json(
    *,
    magic_dns: bool,
    base_domain: str,
    override_local_dns: bool,
    global_nameservers: Sequence[str],
    split: Mapping[str, Sequence[str]],
    search_domains: Sequence[str],
    extra_records: Sequence[tuple[str, str, str]],
) -> dict[str, Any]:
    """DNSConfig as headscale builds it from the same keys (hs types/config.go)."""
    cfg: dict[str, Any] = {}
    if global_nameservers:
        cfg["Resolvers" if override_local_dns else "FallbackResolvers"] = _resolvers(
            global_nameservers
        )
    routes: dict[str, Any] = {domain: _resolvers(servers) for domain, servers in split.items()}
    if routes:
        cfg["Routes"] = routes
    domains = ([base_domain] if base_domain and magic_dns else []) + list(search_domains)
    if domains:
        cfg["Domains"] = domains
    cfg["Proxied"] = magic_dns
    if extra_records:
        cfg["ExtraRecords"] = [
            {"Name": name, "Type": rtype, "Value": value} for name, rtype, value in extra_records
        ]
    return cfg


def canonical(value: Any) -> bytes:
    """Stable JSON bytes, used to compare what a client already has."""
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
