"""MapResponses as a function of (snapshot, node registry, online set).

`build_map` computes what one node should hold, whole; `session.MapSession`
moves a streaming client there by deltas built from what changed. Peer
entries are encoded once per change of that peer in `nodejson.PeerEntries`,
shared by every session of the tailnet; messages are joined from shared
pieces in `mapencode`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from server.protocol.keys import NodePublic
from server.store.model import Node
from server.tailnet.expiries import Expiries
from server.tailnet.nodejson import PeerEntries, addresses, node_json, user_id
from server.tailnet.views import NodeView, PolicyViews
from server.wire import encode, format_time

__all__ = [
    "MapContext",
    "MapState",
    "build_map",
    "not_served_map",
    "top_fields",
    "unapproved_map",
]

BASE_SELF_CAPS: dict[str, Any] = {
    "https://tailscale.com/cap/file-sharing": [],
    "https://tailscale.com/cap/ssh": [],
}


@dataclass(frozen=True, slots=True)
class MapContext:
    """Everything maps depend on; replaced whole when any of it changes."""

    domain: str
    nodes: Mapping[int, Node]
    views: PolicyViews
    derp_map: Mapping[str, Any]
    dns_config: Mapping[str, Any]
    users: Mapping[str, tuple[str, str]]  # name -> (email, display name)
    online: AbstractSet[int]
    entries: PeerEntries
    # The key-expiry index of this context's lineage of node maps: the serving
    # snapshot's and a canary's differ in who is in them, and one index asked
    # about both in turn could not tell the switch from the change log.
    expiries: Expiries
    taildrop: bool = True


def self_entry(ctx: MapContext, node: Node, view: NodeView[int], now: datetime) -> dict[str, Any]:
    caps = dict(BASE_SELF_CAPS) if ctx.taildrop else {"https://tailscale.com/cap/ssh": []}
    caps.update(view.self_cap_map)
    return node_json(
        node,
        domain=ctx.domain,
        allowed_ips=view.self_allowed_ips,
        primary_routes=view.self_primary_routes,
        cap_map=caps,
        online=None,
        now=now,
    )


EXPIRED_LONG_AGO = datetime(1970, 1, 1, 0, 0, 1, tzinfo=UTC)


def not_served_map(node_key: NodePublic, now: datetime) -> bytes:
    """The whole map of a node the tailnet no longer serves (deleted, its user
    gone from git): itself, expired, and no peers. A self node whose key
    expired puts the client in NeedsLogin (protocol.md §5.2)."""
    msg = {
        "Node": {
            "ID": 0,
            "Key": node_key.text,
            "KeyExpiry": format_time(EXPIRED_LONG_AGO),
            "Expired": True,
            "MachineAuthorized": True,
            "Addresses": [],
            "AllowedIPs": [],
        },
        "Peers": [],
        "PacketFilter": [],
        "ControlTime": format_time(now),
    }
    return json.dumps(msg).encode()


def unapproved_map(node: Node, derp_map: Mapping[str, Any], now: datetime) -> bytes:
    """The map of a node waiting for device approval: itself, not authorized,
    and no peers or rules. The client shows that it needs machine
    authorization and keeps polling; the first map after approval is whole."""
    msg = {
        "Node": {
            "ID": node.id,
            "StableID": f"n{node.id:05d}",
            "Name": f"{node.given_name}.",
            "User": user_id(node),
            "Key": node.node_key.text,
            "KeyExpiry": format_time(node.key_expiry),
            "Machine": node.machine_key.text,
            "Addresses": list(addresses(node.ipv4, node.ipv6)),
            "AllowedIPs": list(addresses(node.ipv4, node.ipv6)),
            "MachineAuthorized": False,
            "Hostinfo": encode(node.hostinfo),
        },
        "DERPMap": derp_map,
        "Peers": [],
        "PacketFilter": [],
        "ControlTime": format_time(now),
    }
    return json.dumps(msg).encode()


@dataclass(frozen=True, slots=True)
class MapState:
    top: Mapping[str, Any]  # top-level MapResponse fields, Peers excluded
    peers: Mapping[int, bytes]  # encoded peer entries (shared between sessions)
    profiles: Mapping[int, Mapping[str, Any]]


def build_map(ctx: MapContext, node_id: int, now: datetime) -> MapState | None:
    """What `node_id` should hold now, whole (the first map of a unary
    request, and the reference every session's deltas must add up to)."""
    node = ctx.nodes.get(node_id)
    view = ctx.views.get(node_id)
    if node is None or view is None:
        return None
    peers: dict[int, bytes] = {}
    nodes, online, entries = ctx.nodes, ctx.online, ctx.entries
    for peer_id, pv in view.peers.items():
        peer = nodes.get(peer_id)
        if peer is not None:
            peers[peer_id] = entries.get(peer, pv, peer_id in online, now)
    owners = [node, *filter(None, map(nodes.get, peers))]
    top = top_fields(ctx, node, view, now)
    # Its filter rendered (a view's may be a `ShapedFilter`, read lazily):
    # a plain value, as any JSON encoder takes it.
    top["PacketFilter"] = tuple(top["PacketFilter"])
    return MapState(
        top=top,
        peers=peers,
        profiles={user_id(n): entries.profile(n, ctx.users) for n in owners},
    )


def top_fields(
    ctx: MapContext, node: Node, view: NodeView[int], now: datetime, *, self_node: bool = True
) -> dict[str, Any]:
    """The top-level MapResponse fields of `node`'s map (peers apart; its
    own entry too unless `self_node`)."""
    out = {"Node": self_entry(ctx, node, view, now)} if self_node else {}
    return out | {
        "DERPMap": ctx.derp_map,
        "Domain": ctx.domain,
        "CollectServices": False,
        "DNSConfig": ctx.dns_config,
        "PacketFilter": view.packet_filter_rules,
        "SSHPolicy": view.ssh_policy,
        "Debug": _DEBUG,
    }


_DEBUG = {"DisableLogTail": True}
