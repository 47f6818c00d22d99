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
from bisect import bisect_right
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from ipaddress import IPv4Address, IPv6Address
from itertools import compress
from operator import is_not
from typing import Any, cast

from server.protocol.keys import NodePublic
from server.store.model import Node
from server.tailnet.views import NodeView, PeerView, PolicyViews
from server.wire import TAGGED_USER_ID, encode, format_time, stable_user_id, user_profile_json

__all__ = ["MapContext", "MapSession", "PeerEntries", "build_map", "node_json", "unapproved_map"]

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


def home_derp(node: Node) -> int:
    netinfo = node.hostinfo.net_info
    return 0 if netinfo is None else netinfo.preferred_derp


def user_id(node: Node) -> int:
    return TAGGED_USER_ID if node.tags or node.user is None else _user_id(node.user)


def _owner(node: Node) -> tuple[int, str | None]:
    """(user ID, user name or None for tagged devices): what a profile is built from."""
    if node.tags or node.user is None:
        return TAGGED_USER_ID, None
    return _user_id(node.user), node.user


@lru_cache(maxsize=16384)
def _user_id(name: str) -> int:
    return stable_user_id(name)  # a SHA-256 per call, and every map asks for every peer's


def fqdn(node: Node, domain: str) -> str:
    return f"{node.given_name}.{domain}." if domain else f"{node.given_name}."


@lru_cache(maxsize=65536)
def _addresses(ipv4: IPv4Address | None, ipv6: IPv6Address | None) -> tuple[str, ...]:
    # Formatting an IPv6 address is slow, and every map has a self entry.
    out = []
    if ipv4 is not None:
        out.append(f"{ipv4}/32")
    if ipv6 is not None:
        out.append(f"{ipv6}/128")
    return tuple(out)


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
    out: dict[str, Any] = {
        "ID": node.id,
        "StableID": f"n{node.id:05d}",
        "Name": fqdn(node, domain),
        "User": user_id(node),
        "Key": node.node_key.text,
        "KeyExpiry": format_time(node.key_expiry),
        "Machine": node.machine_key.text,
        "DiscoKey": node.disco_key.text,
        "Addresses": list(_addresses(node.ipv4, node.ipv6)),
        "AllowedIPs": list(allowed_ips),
        "Endpoints": list(node.endpoints),
        "HomeDERP": home_derp(node),
        "Hostinfo": encode(node.hostinfo),
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
        self.maps = _MapMemos()

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
        self.maps.forget(node_id)


def peer_entry(ctx: MapContext, peer_id: int, pv: PeerView, now: datetime) -> bytes | None:
    peer = ctx.nodes.get(peer_id)
    if peer is None:
        return None
    return ctx.entries.get(peer, pv, peer_id in ctx.online, now)


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


def _profile(ctx: MapContext, node: Node) -> Mapping[str, Any]:
    if node.tags or node.user is None:
        return user_profile_json(None, None, None)
    email, display = ctx.users.get(node.user, (node.user, node.user))
    return user_profile_json(node.user, email, display)


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
            "Addresses": list(_addresses(node.ipv4, node.ipv6)),
            "AllowedIPs": list(_addresses(node.ipv4, node.ipv6)),
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
    """What `node_id` should hold now.

    After a commit or a join most of a node's peers are what they were: the
    last map built for it is kept (in `ctx.entries`) with what it was built
    from, and only the peers whose node record, online state or PeerView
    changed since are looked at again. Any doubt (no memo, a key expiry
    passed, most peers changed) builds the peers from scratch.
    """
    node = ctx.nodes.get(node_id)
    view = ctx.views.get(node_id)
    if node is None or view is None:
        return None
    memos = ctx.entries.maps
    memo = memos.memos.get(node_id)
    if memo is None or not memos.no_expiry_between(ctx.nodes, memo.now, now):
        memo = _full_peers(ctx, view, now)
    else:
        memo = _refresh_peers(ctx, view, memo, now)
    memos.memos[node_id] = memo
    top = {
        "Node": self_entry(ctx, node, view, now),
        "DERPMap": ctx.derp_map,
        "Domain": ctx.domain,
        "CollectServices": False,
        "DNSConfig": ctx.dns_config,
        "PacketFilter": view.packet_filter_rules,
        "SSHPolicy": view.ssh_policy,
        "Debug": _DEBUG,
    }
    return MapState(
        top=top,
        peers=memo.peers,
        profiles=memos.user_profiles(node, memo.peers, ctx.nodes, ctx.users),
    )


@dataclass(frozen=True, slots=True)
class _Memo:
    """One node's peers as last built, and what they were built from.

    `peers` is never mutated once built: a MapState handed out
    keeps them, and a session that sees the same `peers` object knows nothing
    changed.
    """

    peers_src: Mapping[int, PeerView]
    nodes: Mapping[int, Node]
    online: frozenset[int]
    now: datetime
    peers: dict[int, bytes]


class _MapMemos:
    """Per-node memos plus the tailnet-wide facts the refreshes share."""

    MAX_DIFFS = 8

    def __init__(self) -> None:
        self.memos: dict[int, _Memo] = {}
        self._profile_sets: dict[int, tuple[Any, ...]] = {}
        self._diffs: list[tuple[Mapping[int, Node], Mapping[int, Node], frozenset[int]]] = []
        self._online_diffs: list[tuple[frozenset[int], frozenset[int], frozenset[int]]] = []
        self._expiries: tuple[Mapping[int, Node] | None, list[datetime]] = (None, [])
        self._owners: tuple[Mapping[int, Node] | None, dict[int, tuple[int, str | None]]] = (
            None,
            {},
        )
        self._users: Mapping[str, tuple[str, str]] | None = None
        self._profiles: dict[str | None, Mapping[str, Any]] = {}

    def forget(self, node_id: int) -> None:
        self.memos.pop(node_id, None)
        self._profile_sets.pop(node_id, None)

    def node_diff(self, old: Mapping[int, Node], new: Mapping[int, Node]) -> frozenset[int]:
        """Ids whose record is not the same object in both (computed once per pair)."""
        if old is new:
            return frozenset()
        for o, n, diff in self._diffs:
            if o is old and n is new:
                return diff
        diff = frozenset(
            [k for k, v in new.items() if old.get(k) is not v] + [k for k in old if k not in new]
        )
        self._diffs = [(old, new, diff), *self._diffs[: self.MAX_DIFFS - 1]]
        return diff

    def online_diff(self, old: frozenset[int], new: frozenset[int]) -> frozenset[int]:
        """Ids online in one set and not the other (computed once per pair: the
        sets hold every online node, so per session it would cost O(nodes))."""
        if old is new:
            return frozenset()
        for o, n, diff in self._online_diffs:
            if o is old and n is new:
                return diff
        diff = old ^ new
        self._online_diffs = [(old, new, diff), *self._online_diffs[: self.MAX_DIFFS - 1]]
        return diff

    def no_expiry_between(self, nodes: Mapping[int, Node], since: datetime, now: datetime) -> bool:
        """True when no key in `nodes` expires in (since, now]: entries built at
        `since` still say the same about expiry."""
        if now <= since:
            return True
        known, expiries = self._expiries
        if known is not nodes:
            expiries = sorted(n.key_expiry for n in nodes.values() if n.key_expiry is not None)
            self._expiries = (nodes, expiries)
        i = bisect_right(expiries, since)
        return i == len(expiries) or expiries[i] > now

    def owners(self, nodes: Mapping[int, Node]) -> Mapping[int, tuple[int, str | None]]:
        """Node id -> (user ID, user name), once per node set rather than per map."""
        known, owners = self._owners
        if known is not nodes:
            owners = {node_id: _owner(node) for node_id, node in nodes.items()}
            self._owners = (nodes, owners)
        return owners

    def user_profiles(
        self,
        node: Node,
        peers: Mapping[int, bytes],
        nodes: Mapping[int, Node],
        users: Mapping[str, tuple[str, str]],
    ) -> Mapping[int, Mapping[str, Any]]:
        """Profiles of `node`'s owner and of its peers' owners. `peers` is a
        memo's dict, replaced whenever any of those peers changes: the same
        object means the same owners."""
        me = _owner(node)
        last = self._profile_sets.get(node.id)
        if last is not None and last[0] is peers and last[1] is users and last[2] == me:
            return cast("Mapping[int, Mapping[str, Any]]", last[3])
        owners = dict(filter(None, map(self.owners(nodes).get, peers)))
        owners[me[0]] = me[1]
        profile = self.profiles(users)
        out = {uid: profile(name) for uid, name in owners.items()}
        self._profile_sets[node.id] = (peers, users, me, out)
        return out

    def profiles(self, users: Mapping[str, tuple[str, str]]) -> Callable[[str | None], Any]:
        if users is not self._users:
            self._users, self._profiles = users, {}
        cache = self._profiles

        def profile(name: str | None) -> Mapping[str, Any]:
            out = cache.get(name)
            if out is None:
                if name is None:
                    out = user_profile_json(None, None, None)
                else:
                    email, display = users.get(name, (name, name))
                    out = user_profile_json(name, email, display)
                cache[name] = out
            return out

        return profile


def _full_peers(ctx: MapContext, view: NodeView[int], now: datetime) -> _Memo:
    peers: dict[int, bytes] = {}
    nodes, online, entries = ctx.nodes, ctx.online, ctx.entries
    for peer_id, pv in view.peers.items():
        peer = nodes.get(peer_id)
        if peer is None:
            continue
        peers[peer_id] = entries.get(peer, pv, peer_id in online, now)
    return _Memo(view.peers, nodes, ctx.online, now, peers)


def _refresh_peers(ctx: MapContext, view: NodeView[int], memo: _Memo, now: datetime) -> _Memo:
    src, old_src = view.peers, memo.peers_src
    touched = ctx.entries.maps.node_diff(memo.nodes, ctx.nodes)
    if memo.online is not ctx.online:
        touched = touched | ctx.entries.maps.online_diff(memo.online, ctx.online)
    # Shared PeerViews are the same objects across recompiles (the compiler
    # lends them: ViewIndex.lend), so an unchanged peer set compares in C by identity.
    if src is not old_src and src != old_src:
        touched = touched | set(compress(src, map(is_not, src.values(), map(old_src.get, src))))
        touched = touched | (old_src.keys() - src.keys())
    if len(touched) * 2 > len(src) + 8:
        return _full_peers(ctx, view, now)
    peers = memo.peers
    if touched:
        peers = dict(peers)  # the old one may be in use
        nodes, online, entries = ctx.nodes, ctx.online, ctx.entries
        for pid in touched:
            pv = src.get(pid)
            peer = nodes.get(pid)
            if pv is None or peer is None:
                peers.pop(pid, None)
            else:
                peers[pid] = entries.get(peer, pv, pid in online, now)
    return _Memo(src, ctx.nodes, ctx.online, now, peers)


_DEBUG = {"DisableLogTail": True}
_UNSENT = object()


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
        # What the client holds: the build memo's dict itself (never mutated)
        # until a delta changes a few entries; then a copy of our own.
        self._peers: Mapping[int, bytes] = {}
        self._peers_own: dict[int, bytes] | None = None
        self._profiles: set[int] = set()
        self._started = False
        self._synced: Mapping[int, bytes] | None = None

    def _own_peers(self) -> dict[int, bytes]:
        if self._peers_own is None:
            self._peers = self._peers_own = dict(self._peers)
        return self._peers_own

    def _hold(self, peers: Mapping[int, bytes]) -> None:
        self._peers, self._peers_own = peers, None

    def next_message(self, state: MapState, now: datetime) -> bytes | None:
        """The message that turns what the client has into `state`, or None."""
        msg: dict[str, Any] = {}
        for key, value in state.top.items():
            src = self._top_src.get(key, _UNSENT)
            # The very object sent last time (DNS, DERP map, adopted views),
            # or a rebuilt but equal one (each recompile renders filters
            # anew), told apart in C without encoding it. `==` equates
            # different JSON only through bool/int/float mixes, and the
            # compilers give each field one type; a list that was a tuple
            # is merely sent again.
            if src is value or src == value:
                continue
            self._top_src[key] = value
            msg[key] = value
        new_profiles = [p for uid, p in sorted(state.profiles.items()) if uid not in self._profiles]
        if new_profiles:
            msg["UserProfiles"] = new_profiles
            self._profiles.update(state.profiles)
        peers_key: str | None = None
        spliced: list[bytes] = []
        if not self._started:
            self._started = True
            self._hold(state.peers)
            if state.peers:
                peers_key = "Peers"
                spliced = [state.peers[pid] for pid in sorted(state.peers)]
        elif state.peers is not self._synced:
            held, want = self._peers, state.peers
            removed = list(held.keys() - want.keys())
            # Entries come from the shared PeerEntries: unchanged ones are the
            # same bytes objects, so find the others by identity, in C.
            for pid in compress(want, map(is_not, want.values(), map(held.get, want))):
                data = want[pid]
                if held.get(pid) != data:
                    spliced.append(data)
            self._hold(want)
            if removed:
                msg["PeersRemoved"] = sorted(removed)
            if spliced:
                peers_key = "PeersChanged"
        # The build memo hands out the same (never mutated) dict while
        # nothing changed: next time, identity says "nothing to do".
        self._synced = state.peers
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
                    self._synced = None
                    del self._own_peers()[pid]
                    removed.append(pid)
                continue
            old = self._peers.get(pid)
            if old is not data and old != data:
                self._synced = None
                self._own_peers()[pid] = data
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
