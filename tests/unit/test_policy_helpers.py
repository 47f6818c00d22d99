"""Shared tailnet for the policy tests (no tests here) and reachability checks."""

from __future__ import annotations

import ipaddress
from typing import Any

from gitctl.policy import CompiledTailnet, Topology, compile_tailnet, parse_policy

USERS = [
    {"id": 1, "name": "alice", "email": "alice@example.com"},
    {"id": 2, "name": "bob", "email": "bob@example.com"},
    {"id": 3, "name": "carol", "email": "carol@other.org"},
]


def node(
    n: int,
    user: str | None = None,
    tags: tuple[str, ...] = (),
    routes: tuple[str, ...] = (),
    approved: tuple[str, ...] = (),
) -> dict[str, Any]:
    return {
        "hostname": f"h{n}",
        "user": user,
        "tags": list(tags),
        "ipv4": f"100.64.0.{n}",
        "ipv6": f"fd7a:115c:a1e0::{n:x}",
        "routable_ips": list(routes),
        "approved_routes": list(approved),
    }


NODES = {
    "alice-laptop": node(1, "alice"),
    "alice-phone": node(2, "alice"),
    "bob-laptop": node(3, "bob"),
    "carol-laptop": node(4, "carol"),
    "web": node(10, tags=("tag:web",)),
    "db": node(11, tags=("tag:db",)),
    "router": node(12, tags=("tag:router",), routes=("10.1.0.0/16",)),
    "exit": node(13, tags=("tag:exit",), routes=("0.0.0.0/0", "::/0")),
}
TAG_OWNERS = {t: ["alice@example.com"] for t in ("tag:web", "tag:db", "tag:router", "tag:exit")}


def compile_policy(policy: dict[str, Any], nodes: dict[str, Any] | None = None) -> CompiledTailnet:
    doc = {"tagOwners": TAG_OWNERS, **policy}
    topology = Topology.from_json({"users": USERS, "nodes": nodes or NODES})
    return compile_tailnet(parse_policy(doc), topology)


def ip_of(name: str, nodes: dict[str, Any] | None = None) -> str:
    return str((nodes or NODES)[name]["ipv4"])


def _contains(text: str, ip: str) -> bool:
    if text == "*":
        return True
    addr = ipaddress.ip_address(ip)
    if "-" in text:
        lo, hi = (ipaddress.ip_address(x) for x in text.split("-"))
        return lo.version == addr.version and lo <= addr <= hi
    net = ipaddress.ip_network(text, strict=False)
    return net.version == addr.version and addr in net


def can_reach(
    tn: CompiledTailnet, src: str, dst: str, port: int, proto: int = 6, dst_ip: str | None = None
) -> bool:
    """Whether ``dst``'s packet filter admits ``src`` on ``port``/``proto``."""
    s_ip, d_ip = ip_of(src), dst_ip or ip_of(dst)
    for rule in tn.nodes[dst].packet_filter_rules:
        if "DstPorts" not in rule or not any(_contains(t, s_ip) for t in rule["SrcIPs"]):
            continue
        if proto not in (rule.get("IPProto") or (6, 17, 1, 58)):
            continue
        for d in rule["DstPorts"]:
            if _contains(d["IP"], d_ip) and d["Ports"]["First"] <= port <= d["Ports"]["Last"]:
                return True
    return False


def sees(tn: CompiledTailnet, viewer: str, peer: str) -> bool:
    return peer in tn.nodes[viewer].peers
