"""Per-node policy views: what each node may see and accept, for one
(snapshot, node set) pair.

This is the server's only visibility function: full maps and every delta are
built from the same `PolicyViews`, so an incremental path can never show a
peer that the policy hides. Views are recomputed only when the snapshot or the
set of nodes (join, leave, rename, tags, routes) changes, never for endpoint,
DERP or online changes. Even then each node's view is built only when first
asked for, and a join, a leave or a commit keeps the views it cannot touch
(`changed` names the others, so only their sessions need waking); a view that
a join or leave merely gives or takes that one peer is patched, not rebuilt.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import lru_cache
from ipaddress import IPv4Address, IPv6Address
from itertools import repeat
from operator import is_
from typing import Any, cast

from gitctl.policy import (
    CompiledTailnet,
    Policy,
    Topology,
    TopologyNode,
    TopologyUser,
    compile_tailnet,
)
from gitctl.policy.compile import reuse_previous
from gitctl.policy.viewindex import ViewIndex
from gitctl.policy.viewreuse import PeerChange
from server.store.model import Node

__all__ = [
    "NodeView",
    "PeerView",
    "PolicyViews",
    "compile_views",
    "compute_views",
    "to_topology_node",
    "topology_name",
]


@dataclass(frozen=True, slots=True)
class PeerView:
    allowed_ips: tuple[str, ...]
    primary_routes: tuple[str, ...] = ()
    cap_map: Mapping[str, Any] = field(default_factory=dict)


_InternKey = tuple[tuple[str, ...], tuple[str, ...]]  # PeerView without cap_map


@dataclass(frozen=True, slots=True)
class NodeView:
    packet_filter: tuple[Mapping[str, Any], ...]
    ssh_policy: Mapping[str, Any]
    peers: Mapping[int, PeerView]
    self_cap_map: Mapping[str, Any]
    self_allowed_ips: tuple[str, ...]
    self_primary_routes: tuple[str, ...] = ()


class PolicyViews:
    """Node id -> its view, converted from the compiled policy on first use.

    ``changed``: when built from a previous `PolicyViews`, the nodes whose
    map may differ from what that one gave them (None: any node). Immutable
    in meaning; the caches only fill in.
    """

    def __init__(
        self,
        ids: Sequence[int],
        build: Callable[[int], NodeView],
        visible: Callable[[int], Sequence[int]],
        *,
        compiled: Any = None,
        changed: frozenset[int] | None = None,
    ) -> None:
        self._ids = frozenset(ids)
        self._build = build
        self._visible = visible
        self._cache: dict[int, NodeView] = {}
        self.compiled = compiled
        self.changed = changed
        # PeerViews without capabilities, by value: a recompile that hands
        # out the same objects lets map refreshes compare peers by identity.
        self.interned: Mapping[_InternKey, PeerView] = {}
        self.primaries: Mapping[str, int] = {}  # subnet -> its primary router now

    @property
    def by_node(self) -> Mapping[int, NodeView]:
        # Made on demand: an attribute would be a reference cycle, leaving
        # every replaced PolicyViews (all its views) to the cyclic collector.
        return _LazyById(self)

    def get(self, node_id: int) -> NodeView | None:
        view = self._cache.get(node_id)
        if view is None and node_id in self._ids:
            view = self._cache[node_id] = self._build(node_id)
        return view

    def visible_to(self, node_id: int) -> Sequence[int]:
        """Nodes that can see `node_id` (visibility is symmetric in Tailscale)."""
        if node_id not in self._ids:
            return []
        view = self._cache.get(node_id)
        # Its own peers, when its view is at hand: the compiler's answer
        # would be the same set, spelled in node names to convert back.
        return list(view.peers) if view is not None else self._visible(node_id)

    def adopt(self, previous: PolicyViews, keep: Iterable[int]) -> None:
        """Reuse `previous`'s converted views of the nodes in `keep`."""
        for node_id in keep:
            view = previous._cache.get(node_id)
            if view is not None and node_id in self._ids:
                self._cache[node_id] = view


class _LazyById(Mapping[int, NodeView]):
    def __init__(self, views: PolicyViews) -> None:
        self._views = views

    def __getitem__(self, node_id: int) -> NodeView:
        view = self._views.get(node_id)
        if view is None:
            raise KeyError(node_id)
        return view

    def __iter__(self) -> Iterator[int]:
        return iter(self._views._ids)

    def __len__(self) -> int:
        return len(self._views._ids)


def topology_name(node: Node) -> str:
    return str(node.id)


def own_prefixes(node: Node) -> tuple[str, ...]:
    out = []
    if node.ipv4 is not None:
        out.append(f"{node.ipv4}/32")
    if node.ipv6 is not None:
        out.append(f"{node.ipv6}/128")
    return tuple(out)


def advertised_routes(node: Node) -> tuple[str, ...]:
    return node.hostinfo.routable_ips or ()


@lru_cache(maxsize=65536)
def _ip_text(ip: IPv4Address | IPv6Address) -> str:
    return str(ip)  # slow for IPv6, and every recompile needs every node's


def to_topology_node(node: Node, approved: tuple[str, ...], *, online: bool = True) -> TopologyNode:
    """The policy compiler's view of a registered node, with the posture facts
    its Hostinfo reports (an empty text is unreported; AllowsUpdate is sent
    only when true, so its absence stays unreported too)."""
    info = node.hostinfo
    return TopologyNode(
        name=topology_name(node),
        hostname=node.given_name,
        user=node.user if not node.tags else None,
        tags=tuple(node.tags),
        ipv4=_ip_text(node.ipv4) if node.ipv4 is not None else None,
        ipv6=_ip_text(node.ipv6) if node.ipv6 is not None else None,
        routable_ips=advertised_routes(node),
        approved_routes=approved,
        os=info.os or None,
        os_version=info.os_version or None,
        ts_version=info.ipn_version or None,
        auto_update=info.allows_update or None,
        state_encrypted=info.state_encrypted,
        created=node.created,
        online=online,
    )


def _interner(
    table: dict[_InternKey, PeerView], lend: Mapping[_InternKey, PeerView]
) -> Callable[[PeerView], PeerView]:
    """Equal PeerViews (without capabilities) as one object, taking `lend`'s
    object for a value it already had. `table` ends up holding only the values
    in use, so it does not grow with every node that ever left."""

    def intern(pv: PeerView) -> PeerView:
        if pv.cap_map:
            return pv
        key = (pv.allowed_ips, pv.primary_routes)
        out = table.get(key)
        if out is None:
            out = table[key] = lend.get(key, pv)
        return out

    return intern


def compile_views(
    policy: Policy,
    users: Sequence[tuple[int, str, str]],
    nodes: Sequence[Node],
    approved_routes: Mapping[int, tuple[str, ...]],
    *,
    now: datetime | None = None,
    offline_routers: frozenset[int] = frozenset(),
    primaries: Mapping[str, int] | None = None,
    groups: Mapping[str, tuple[str, ...]] | None = None,
    against: CompiledTailnet | None = None,
) -> CompiledTailnet:
    """The policy index over these nodes (see `compute_views` for the
    arguments), compared with `against` (the index serving now) to find the
    views it may change. It reads only frozen values and never iterates the
    serving views' caches, so it may run in a worker thread while sessions
    fill those; `compute_views` then adopts the unchanged views on the loop."""
    topo = Topology(
        users=tuple(TopologyUser(id=uid, name=name, email=email) for uid, name, email in users),
        nodes=tuple(
            to_topology_node(n, approved_routes.get(n.id, ()), online=n.id not in offline_routers)
            for n in nodes
        ),
        primaries={p: str(i) for p, i in (primaries or {}).items()},
        groups=dict(groups or {}),
    )
    # The policy's `tests` were checked when the commit was loaded (against its own
    # users and tags); live nodes coming and going must not un-serve a policy.
    compiled = compile_tailnet(
        policy,
        topo,
        now=now,
        enforce_tests=False,
        keep_views=False,  # each is converted once and kept in that form
    )
    index, serving = compiled.visibility, against.visibility if against is not None else None
    if isinstance(index, ViewIndex) and isinstance(serving, ViewIndex):
        index.compare(serving)
    return compiled


def compute_views(
    policy: Policy,
    users: Sequence[tuple[int, str, str]],
    nodes: Sequence[Node],
    approved_routes: Mapping[int, tuple[str, ...]],
    *,
    previous: PolicyViews | None = None,
    previous_nodes: Mapping[int, Node] | None = None,
    reuse: PolicyViews | None = None,
    now: datetime | None = None,
    offline_routers: frozenset[int] = frozenset(),
    primaries: Mapping[str, int] | None = None,
    groups: Mapping[str, tuple[str, ...]] | None = None,
    compiled: CompiledTailnet | None = None,
) -> PolicyViews:
    """Compile `policy` against the live nodes; views are built on demand.

    `policy` is the parsed policy of the serving snapshot (a tailnet.d without
    policy keys serves gitctl's ALLOW_ALL: there is no second visibility path);
    `users` are (id, name, email); `approved_routes` maps node id to the
    routes it advertises that are approved. `previous` (the views over
    `previous_nodes`: the same policy before nodes joined, left or changed,
    or another policy over the same nodes) lets unaffected views be reused;
    `changed` then names the nodes whose maps may differ.
    `reuse` (any earlier views, e.g. of another policy) only lends its
    PeerView objects to equal values, so unchanged peers stay identical.
    `now` is when `expires` entries count. `offline_routers` are routers not
    reachable now and `primaries` the primaries last served (prefix -> node
    id): the election keeps a primary while it is online and moves its
    subnets to the next online router when it is not; `PolicyViews.primaries`
    says who it chose. `groups` (policy group -> emails) are members the
    identity provider gave at login, beside those the policy declares.
    `compiled`: the index `compile_views` built from these same arguments
    (in a worker thread), else it is built here.
    After a join or leave, a node that merely gains or loses that peer gets
    its previous view with the peer added or removed (see `_peer_patches`).
    """
    donor = reuse or previous
    table: dict[_InternKey, PeerView] = {}
    intern = _interner(table, donor.interned if donor is not None else {})
    if compiled is None:
        compiled = compile_views(
            policy,
            users,
            nodes,
            approved_routes,
            now=now,
            offline_routers=offline_routers,
            primaries=primaries,
            groups=groups,
        )
    compiled = reuse_previous(compiled, previous.compiled if previous is not None else None)
    by_id = {n.id: n for n in nodes}
    id_of = {topology_name(n): n.id for n in nodes}
    # Peers without routes share one compiled view; convert each once. The
    # compiled views are kept alive with their conversions so ids stay unique.
    converted: dict[int, PeerView] = {}
    keep: list[Any] = []
    cached = converted.get

    def peer(pv: Any) -> PeerView:
        out = converted.get(id(pv))
        if out is None:
            keep.append(pv)
            out = converted[id(pv)] = intern(
                PeerView(
                    allowed_ips=tuple(pv.allowed_ips),
                    primary_routes=tuple(pv.primary_routes or ()),
                    cap_map=dict(pv.cap_map or {}),
                )
            )
        return out

    # Previous views of the nodes a join or leave only adds a peer to or
    # removes one from (filled in below), and that peer.
    bases: dict[int, NodeView] = {}
    index = compiled.visibility if isinstance(compiled.visibility, ViewIndex) else None
    change = index.peer_change if index is not None else None

    def build(node_id: int) -> NodeView:
        base = bases.pop(node_id, None)
        if base is not None and index is not None and change is not None:
            peers = dict(base.peers)
            if change.joined:  # the newest node: last, as in a fresh build
                at = index.position
                pv = index.peer_view(at[topology_name(by_id[node_id])], at[change.name])
                peers[int(change.name)] = peer(pv)
            else:
                del peers[int(change.name)]
            return replace(base, peers=peers)
        node = by_id[node_id]
        nv = compiled.nodes[topology_name(node)]
        pvs = list(nv.peers.values())
        # Mostly hits in the cache: look them all up at once, convert the rest.
        got = list(map(cached, map(id, pvs)))
        if any(map(is_, got, repeat(None))):  # by identity: `in` would call __eq__
            got = [g or peer(pv) for g, pv in zip(got, pvs, strict=True)]
        converted_peers = cast("list[PeerView]", got)  # no misses left
        return NodeView(
            packet_filter=tuple(nv.packet_filter_rules),
            ssh_policy=nv.ssh_policy or {"rules": []},
            peers=dict(zip(map(id_of.__getitem__, nv.peers), converted_peers, strict=True)),
            self_cap_map=dict(nv.self_cap_map or {}),
            self_allowed_ips=tuple(nv.self_allowed_ips or own_prefixes(node)),
            self_primary_routes=tuple(nv.self_primary_routes or ()),
        )

    def visible(node_id: int) -> list[int]:
        return [id_of[name] for name in compiled.peer_names(str(node_id))]

    views = PolicyViews(list(by_id), build, visible, compiled=compiled)
    views.interned = table
    if index is not None:
        views.primaries = {p: int(name) for p, name in index.primaries().items()}
    if previous is not None and previous_nodes is not None and compiled.changed is not None:
        views.changed = _changed_ids(compiled.changed, previous, previous_nodes, views, by_id)
        views.adopt(previous, (i for i in by_id if i not in views.changed))
        if change is not None:
            bases.update(_peer_patches(change, previous, previous_nodes, by_id, table))
    return views


def _peer_patches(
    change: PeerChange,
    previous: PolicyViews,
    previous_nodes: Mapping[int, Node],
    nodes: Mapping[int, Node],
    table: dict[_InternKey, PeerView],
) -> dict[int, NodeView]:
    """The previous views of the nodes a join or leave (`change`, a
    `PeerChange`) leaves as they were but for that peer, by node id.

    The compiler vouches for their policy; their own records must be the
    same too (a view holds its node's addresses). The PeerView objects in
    use are the previous ones give or take the node: `table` takes them
    over, so later recompiles hand out the same objects for unchanged peers.
    """
    table.update(previous.interned)
    if not change.joined:
        own = own_prefixes(previous_nodes[int(change.name)])
        for prefixes in (own, tuple(p for p in own if ":" in p)):
            table.pop((prefixes, ()), None)  # as it was shown, with IPv4 or without
    out = {}
    for name in change.viewers:
        node_id = int(name)
        base = previous._cache.get(node_id)
        old, new = previous_nodes.get(node_id), nodes.get(node_id)
        if base is not None and old is not None and (old is new or old == new):
            out[node_id] = base
    return out


def _changed_ids(
    policy_changed: frozenset[str],
    old: PolicyViews,
    old_nodes: Mapping[int, Node],
    new: PolicyViews,
    new_nodes: Mapping[int, Node],
) -> frozenset[int]:
    """Nodes whose maps may differ: those the policy says, plus every node
    whose record changed in a way the policy does not see (a new key, an
    expiry) and the nodes that see it."""
    out = {int(name) for name in policy_changed}
    for node_id in old_nodes.keys() | new_nodes.keys():
        was, now = old_nodes.get(node_id), new_nodes.get(node_id)
        if was is not now and was != now:  # unchanged records are the same objects
            out.add(node_id)
            out.update(old.visible_to(node_id))
            out.update(new.visible_to(node_id))
    return frozenset(out)
