"""MapResponses as a function of (snapshot, node registry, online set).

`build_map` computes what one node should hold; `MapSession` remembers what
its stream already sent and turns the next `build_map` result into the
smallest message that brings the client there (PeersChanged, PeersRemoved,
changed top-level fields). A freshly opened stream gets a complete map, as the
client starts a new session state per stream (protocol.md §4.2.2).
Volatile changes to one peer go through `peer_entries`, which builds only that
peer's entry for a viewer: O(1) per viewer, no recompilation.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

from server.store.model import Node
from server.views import NodeView, PeerView, PolicyViews
from server.wire import TAGGED_USER_ID, canonical, format_time, stable_user_id, user_profile_json

__all__ = ["MapContext", "MapSession", "build_map", "node_json"]

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
    online: frozenset[int]
    taildrop: bool = True


@lru_cache(maxsize=16384)
def _hostinfo(text: str) -> Mapping[str, Any]:
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def home_derp(node: Node) -> int:
    netinfo = _hostinfo(node.hostinfo).get("NetInfo") or {}
    region = netinfo.get("PreferredDERP") if isinstance(netinfo, dict) else None
    return region if isinstance(region, int) else 0


def user_id(node: Node) -> int:
    return TAGGED_USER_ID if node.tags or node.user is None else stable_user_id(node.user)


def fqdn(node: Node, domain: str) -> str:
    return f"{node.given_name}.{domain}." if domain else f"{node.given_name}."


def node_json(
    node: Node,
    *,
    domain: str,
    allowed_ips: Iterable[str],
    primary_routes: Iterable[str],
    cap_map: Mapping[str, Any],
    online: bool | None,
    now: datetime,
) -> dict[str, Any]:
    addresses = []
    if node.ipv4 is not None:
        addresses.append(f"{node.ipv4}/32")
    if node.ipv6 is not None:
        addresses.append(f"{node.ipv6}/128")
    out: dict[str, Any] = {
        "ID": node.id,
        "StableID": f"n{node.id:05d}",
        "Name": fqdn(node, domain),
        "User": user_id(node),
        "Key": node.node_key.text,
        "KeyExpiry": format_time(node.key_expiry),
        "Machine": node.machine_key.text,
        "DiscoKey": node.disco_key.text,
        "Addresses": addresses,
        "AllowedIPs": list(allowed_ips),
        "Endpoints": list(node.endpoints),
        "HomeDERP": home_derp(node),
        "Hostinfo": _hostinfo(node.hostinfo),
        "Created": format_time(node.created),
        "Cap": node.capver,
        "MachineAuthorized": True,
        "CapMap": dict(cap_map),
    }
    routes = list(primary_routes)
    if routes:
        out["PrimaryRoutes"] = routes
    if node.tags:
        out["Tags"] = sorted(node.tags)
    if online is not None:
        out["Online"] = online
        if not online and node.last_seen is not None:
            out["LastSeen"] = format_time(node.last_seen)
    if node.key_expiry is not None and node.key_expiry <= now:
        out["Expired"] = True
    return out


def peer_entry(ctx: MapContext, peer_id: int, pv: PeerView, now: datetime) -> dict[str, Any] | None:
    peer = ctx.nodes.get(peer_id)
    if peer is None:
        return None
    return node_json(
        peer,
        domain=ctx.domain,
        allowed_ips=pv.allowed_ips,
        primary_routes=pv.primary_routes,
        cap_map=pv.cap_map,
        online=peer_id in ctx.online,
        now=now,
    )


def self_entry(ctx: MapContext, node: Node, view: NodeView, now: datetime) -> dict[str, Any]:
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


def _profile(ctx: MapContext, node: Node) -> dict[str, Any]:
    if node.tags or node.user is None:
        return user_profile_json(None, None, None)
    email, display = ctx.users.get(node.user, (node.user, node.user))
    return user_profile_json(node.user, email, display)


@dataclass(frozen=True, slots=True)
class MapState:
    top: Mapping[str, Any]  # top-level MapResponse fields, Peers excluded
    peers: Mapping[int, Mapping[str, Any]]
    profiles: Mapping[int, Mapping[str, Any]]


def build_map(ctx: MapContext, node_id: int, now: datetime) -> MapState | None:
    node = ctx.nodes.get(node_id)
    view = ctx.views.get(node_id)
    if node is None or view is None:
        return None
    peers: dict[int, Mapping[str, Any]] = {}
    profiles = {user_id(node): _profile(ctx, node)}
    for peer_id, pv in view.peers.items():
        entry = peer_entry(ctx, peer_id, pv, now)
        if entry is not None:
            peers[peer_id] = entry
            profiles.setdefault(entry["User"], _profile(ctx, ctx.nodes[peer_id]))
    top = {
        "Node": self_entry(ctx, node, view, now),
        "DERPMap": ctx.derp_map,
        "Domain": ctx.domain,
        "CollectServices": False,
        "DNSConfig": ctx.dns_config,
        "PacketFilter": list(view.packet_filter),
        "SSHPolicy": view.ssh_policy,
        "Debug": {"DisableLogTail": True},
    }
    return MapState(top=top, peers=peers, profiles=profiles)


class MapSession:
    """What one streaming client holds, and the deltas that move it forward."""

    def __init__(self, node_id: int) -> None:
        self.node_id = node_id
        self._top: dict[str, bytes] = {}
        self._peers: dict[int, bytes] = {}
        self._profiles: set[int] = set()
        self._started = False

    def next_message(self, state: MapState, now: datetime) -> dict[str, Any] | None:
        """The message that turns what the client has into `state`, or None."""
        msg: dict[str, Any] = {}
        for key, value in state.top.items():
            enc = canonical(value)
            if self._top.get(key) != enc:
                msg[key] = value
                self._top[key] = enc
        new_profiles = [p for uid, p in sorted(state.profiles.items()) if uid not in self._profiles]
        if new_profiles:
            msg["UserProfiles"] = new_profiles
            self._profiles.update(state.profiles)
        if not self._started:
            self._started = True
            self._peers = {pid: canonical(p) for pid, p in state.peers.items()}
            if state.peers:
                msg["Peers"] = [state.peers[pid] for pid in sorted(state.peers)]
        else:
            removed = sorted(set(self._peers) - set(state.peers))
            changed = []
            for pid in sorted(state.peers):
                enc = canonical(state.peers[pid])
                if self._peers.get(pid) != enc:
                    changed.append(state.peers[pid])
                    self._peers[pid] = enc
            for pid in removed:
                del self._peers[pid]
            if removed:
                msg["PeersRemoved"] = removed
            if changed:
                msg["PeersChanged"] = changed
        if not msg:
            return None
        msg["ControlTime"] = format_time(now)
        return msg

    def peer_changes(self, ctx: MapContext, peer_ids: Iterable[int], now: datetime) -> dict[str, Any] | None:
        """Deltas for a few peers whose volatile fields changed (no recompile)."""
        view = ctx.views.get(self.node_id)
        if view is None or not self._started:
            return None
        changed, removed, profiles = [], [], []
        for pid in sorted(set(peer_ids)):
            pv = view.peers.get(pid)
            entry = peer_entry(ctx, pid, pv, now) if pv is not None else None
            if entry is None:
                if pid in self._peers:
                    del self._peers[pid]
                    removed.append(pid)
                continue
            enc = canonical(entry)
            if self._peers.get(pid) != enc:
                self._peers[pid] = enc
                changed.append(entry)
                if entry["User"] not in self._profiles:
                    self._profiles.add(entry["User"])
                    profiles.append(_profile(ctx, ctx.nodes[pid]))
        msg: dict[str, Any] = {}
        if changed:
            msg["PeersChanged"] = changed
        if removed:
            msg["PeersRemoved"] = removed
        if profiles:
            msg["UserProfiles"] = profiles
        if not msg:
            return None
        msg["ControlTime"] = format_time(now)
        return msg
