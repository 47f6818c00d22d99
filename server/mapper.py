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

__all__ = ["MapContext", "MapSession", "PeerEntries", "build_map", "node_json"]

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
    entries: PeerEntries
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


class PeerEntries:
    """Encoded peer entries shared by every session of one tailnet.

    A peer's entry is the same bytes for every viewer that has the same
    PeerView of it (most viewers: routes and caps rarely differ), so it is
    encoded once per change of that peer, not once per viewer. Entries are
    keyed by what they are built from and checked by identity first, then by
    equality, so a reloaded but unchanged Node still hits.
    """

    MAX_VARIANTS = 8

    def __init__(self, domain: str) -> None:
        self.domain = domain
        self._entries: dict[int, list[tuple[Node, PeerView, bool, bool, bytes]]] = {}

    def get(self, node: Node, pv: PeerView, online: bool, now: datetime) -> bytes:
        expired = node.key_expiry is not None and node.key_expiry <= now
        variants = self._entries.get(node.id)
        if variants:
            for i, (n, p, o, e, data) in enumerate(variants):
                if (
                    o is online
                    and e is expired
                    and (p is pv or p == pv)
                    and (n is node or n == node)
                ):
                    if n is not node or p is not pv:
                        variants[i] = (node, pv, o, e, data)  # next time, identity hits
                    return data
            if variants[0][0] != node:
                variants.clear()  # the node changed: its old entries are dead
        else:
            variants = self._entries[node.id] = []
        data = json.dumps(
            node_json(
                node,
                domain=self.domain,
                allowed_ips=pv.allowed_ips,
                primary_routes=pv.primary_routes,
                cap_map=pv.cap_map,
                online=online,
                now=now,
            ),
            separators=(",", ":"),
        ).encode()
        variants.append((node, pv, online, expired, data))
        del variants[: -self.MAX_VARIANTS]
        return data

    def forget(self, node_id: int) -> None:
        self._entries.pop(node_id, None)


def peer_entry(ctx: MapContext, peer_id: int, pv: PeerView, now: datetime) -> bytes | None:
    peer = ctx.nodes.get(peer_id)
    if peer is None:
        return None
    return ctx.entries.get(peer, pv, peer_id in ctx.online, now)


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


def _profile(ctx: MapContext, node: Node) -> Mapping[str, Any]:
    if node.tags or node.user is None:
        return user_profile_json(None, None, None)
    email, display = ctx.users.get(node.user, (node.user, node.user))
    return user_profile_json(node.user, email, display)


@dataclass(frozen=True, slots=True)
class MapState:
    top: Mapping[str, Any]  # top-level MapResponse fields, Peers excluded
    peers: Mapping[int, bytes]  # encoded peer entries (shared between sessions)
    profiles: Mapping[int, Mapping[str, Any]]


def build_map(ctx: MapContext, node_id: int, now: datetime) -> MapState | None:
    node = ctx.nodes.get(node_id)
    view = ctx.views.get(node_id)
    if node is None or view is None:
        return None
    peers: dict[int, bytes] = {}
    owners = {user_id(node): node}
    nodes, online, entries = ctx.nodes, ctx.online, ctx.entries
    for peer_id, pv in view.peers.items():
        peer = nodes.get(peer_id)
        if peer is None:
            continue
        peers[peer_id] = entries.get(peer, pv, peer_id in online, now)
        owners.setdefault(user_id(peer), peer)
    top = {
        "Node": self_entry(ctx, node, view, now),
        "DERPMap": ctx.derp_map,
        "Domain": ctx.domain,
        "CollectServices": False,
        "DNSConfig": ctx.dns_config,
        "PacketFilter": view.packet_filter,
        "SSHPolicy": view.ssh_policy,
        "Debug": _DEBUG,
    }
    profiles = {uid: _profile(ctx, owner) for uid, owner in owners.items()}
    return MapState(top=top, peers=peers, profiles=profiles)


_DEBUG = {"DisableLogTail": True}


def _encode(
    msg: dict[str, Any], peers_key: str | None = None, peers: Iterable[bytes] = ()
) -> bytes:
    """JSON of `msg`, with already-encoded peer entries spliced in as `peers_key`."""
    head = json.dumps(msg, separators=(",", ":")).encode()
    if peers_key is None:
        return head
    return b"".join((head[:-1], b',"', peers_key.encode(), b'":[', b",".join(peers), b"]}"))


class MapSession:
    """What one streaming client holds, and the deltas that move it forward.

    Messages come out encoded (JSON bytes): peer entries are spliced in from
    the shared PeerEntries rather than encoded again for every session.
    """

    def __init__(self, node_id: int) -> None:
        self.node_id = node_id
        self._top_src: dict[str, Any] = {}
        self._top: dict[str, bytes] = {}
        self._peers: dict[int, bytes] = {}
        self._profiles: set[int] = set()
        self._started = False

    def next_message(self, state: MapState, now: datetime) -> bytes | None:
        """The message that turns what the client has into `state`, or None."""
        msg: dict[str, Any] = {}
        for key, value in state.top.items():
            if self._top_src.get(key) is value:
                continue  # the very object sent last time (filters, DNS, DERP map)
            enc = canonical(value)
            self._top_src[key] = value
            if self._top.get(key) != enc:
                msg[key] = value
                self._top[key] = enc
        new_profiles = [p for uid, p in sorted(state.profiles.items()) if uid not in self._profiles]
        if new_profiles:
            msg["UserProfiles"] = new_profiles
            self._profiles.update(state.profiles)
        peers_key: str | None = None
        spliced: list[bytes] = []
        if not self._started:
            self._started = True
            self._peers = dict(state.peers)
            if state.peers:
                peers_key = "Peers"
                spliced = [state.peers[pid] for pid in sorted(state.peers)]
        else:
            held = self._peers
            removed = [pid for pid in held if pid not in state.peers]
            for pid, data in state.peers.items():
                old = held.get(pid)
                if old is not data and old != data:
                    spliced.append(data)
                    held[pid] = data
            for pid in removed:
                del held[pid]
            if removed:
                msg["PeersRemoved"] = sorted(removed)
            if spliced:
                peers_key = "PeersChanged"
        if not msg and peers_key is None:
            return None
        msg["ControlTime"] = format_time(now)
        return _encode(msg, peers_key, spliced)

    def peer_changes(self, ctx: MapContext, peer_ids: Iterable[int], now: datetime) -> bytes | None:
        """Deltas for a few peers whose volatile fields changed (no recompile)."""
        view = ctx.views.get(self.node_id)
        if view is None or not self._started:
            return None
        changed: list[bytes] = []
        removed, profiles = [], []
        for pid in sorted(set(peer_ids)):
            pv = view.peers.get(pid)
            data = peer_entry(ctx, pid, pv, now) if pv is not None else None
            if data is None:
                if pid in self._peers:
                    del self._peers[pid]
                    removed.append(pid)
                continue
            old = self._peers.get(pid)
            if old is not data and old != data:
                self._peers[pid] = data
                changed.append(data)
                peer = ctx.nodes[pid]
                uid = user_id(peer)
                if uid not in self._profiles:
                    self._profiles.add(uid)
                    profiles.append(_profile(ctx, peer))
        msg: dict[str, Any] = {}
        if removed:
            msg["PeersRemoved"] = removed
        if profiles:
            msg["UserProfiles"] = profiles
        if not msg and not changed:
            return None
        msg["ControlTime"] = format_time(now)
        return _encode(msg, "PeersChanged" if changed else None, changed)
