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

from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from datetime import datetime
from functools import lru_cache
from ipaddress import IPv4Address, IPv6Address
from operator import attrgetter

from gitctl.policy import (
    CompiledTailnet,
    NodeView,
    PeerView,
    Policy,
    Topology,
    TopologyNode,
    TopologyUser,
    compile_tailnet,
)
from gitctl.policy.compile import reuse_previous
from gitctl.policy.viewindex import ViewIndex
from server.store.addresses import ip_text
from server.store.model import Node
from server.tailnet.topologyrows import TopologyRows

__all__ = [
    "NodeView",
    "PeerView",
    "PolicyViews",
    "TopologyNodes",
    "compile_views",
    "compute_views",
    "to_topology_node",
]


class PolicyViews:
    """Node id -> its view: the compiler's own views (keyed by node id), each
    built on first use.

    ``changed``: when built from a previous `PolicyViews`, the nodes whose
    map may differ from what that one gave them (None: any node). Immutable
    in meaning; the caches only fill in.
    """

    def __init__(
        self, compiled: CompiledTailnet[int], *, changed: frozenset[int] | None = None
    ) -> None:
        self.compiled = compiled
        self.changed = changed
        self.primaries: Mapping[str, int] = compiled.primaries()  # subnet -> its router now

    @property
    def by_node(self) -> Mapping[int, NodeView[int]]:
        return self.compiled.nodes

    def get(self, node_id: int) -> NodeView[int] | None:
        return self.compiled.nodes.get(node_id)

    def visible_to(self, node_id: int) -> Sequence[int]:
        """Nodes that can see `node_id` (visibility is symmetric in Tailscale)."""
        return self.compiled.peer_keys(node_id)


_node_id = attrgetter("id")  # in C: a join must not cost a Python step per node


def advertised_routes(node: Node) -> tuple[str, ...]:
    return node.hostinfo.routable_ips or ()


@lru_cache(maxsize=65536)
def _ip_text(ip: IPv4Address | IPv6Address) -> str:
    return ip_text(ip)  # every recompile needs every node's


def to_topology_node(node: Node, approved: tuple[str, ...], *, online: bool = True) -> TopologyNode:
    """The policy compiler's view of a registered node, with the posture facts
    its Hostinfo reports (an empty text is unreported; AllowsUpdate is sent
    only when true, so its absence stays unreported too)."""
    info = node.hostinfo
    return TopologyNode(
        name=node.given_name,
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


class TopologyNodes(TopologyRows):
    """Registered nodes as the compiler sees them (see `TopologyRows`)."""

    def __init__(self) -> None:
        super().__init__(_to_row)


def _to_row(node: Node, approved: tuple[str, ...], *, online: bool) -> TopologyNode:
    return to_topology_node(node, approved, online=online)  # as this module names it now


def topology_users(users: Sequence[tuple[int, str, str]]) -> tuple[TopologyUser, ...]:
    """(id, name, email) users as the compiler sees them."""
    return tuple(TopologyUser(id=uid, name=name, email=email) for uid, name, email in users)


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
    against: CompiledTailnet[int] | None = None,
    topology_nodes: Sequence[TopologyNode] | None = None,
    users_held: tuple[TopologyUser, ...] | None = None,
    keys: Sequence[int] | None = None,
) -> CompiledTailnet[int]:
    """The policy index over these nodes, keyed by node id (see
    `compute_views` for the arguments), compared with `against` (the index
    serving now) to find the views it may change. It reads only frozen values
    and never iterates the serving views' caches, so it may run in a worker
    thread while sessions fill those; `compute_views` then adopts the
    unchanged views on the loop. `topology_nodes`: `nodes` as the compiler
    sees them, when the caller holds them (see `TopologyNodes`); `users_held`
    likewise `users` (see `topology_users`), and `keys` the ids of `nodes`."""
    if topology_nodes is None:
        topology_nodes = [
            to_topology_node(n, approved_routes.get(n.id, ()), online=n.id not in offline_routers)
            for n in nodes
        ]
    topo = Topology(
        users=topology_users(users) if users_held is None else users_held,
        nodes=tuple(topology_nodes),
        primaries=dict(primaries or {}),
        groups=dict(groups or {}),
    )
    # The policy's `tests` were checked when the commit was loaded (against its own
    # users and tags); live nodes coming and going must not un-serve a policy.
    compiled = compile_tailnet(
        policy,
        topo,
        keys=list(map(_node_id, nodes)) if keys is None else keys,
        now=now,
        enforce_tests=False,
        base=against,
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
    compiled: CompiledTailnet[int] | None = None,
    records: tuple[Mapping[int, Node], AbstractSet[int]] | None = None,
) -> PolicyViews:
    """Compile `policy` against the live nodes; views are built on demand.

    `policy` is the parsed policy of the serving snapshot (a tailnet.d without
    policy keys serves gitctl's ALLOW_ALL: there is no second visibility path);
    `users` are (id, name, email); `approved_routes` maps node id to the
    routes it advertises that are approved. `previous` (the views over
    `previous_nodes`: the same policy before nodes joined, left or changed,
    or another policy over the same nodes) lets unaffected views be reused
    (and views that merely gain or lose one peer be patched, in the
    compiler); `changed` then names the nodes whose maps may differ.
    `reuse` (any earlier views, e.g. of another policy) only lends its
    PeerView objects to equal values, so unchanged peers stay identical.
    `now` is when `expires` entries count. `offline_routers` are routers not
    reachable now and `primaries` the primaries last served (prefix -> node
    id): the election keeps a primary while it is online and moves its
    subnets to the next online router when it is not; `PolicyViews.primaries`
    says who it chose. `groups` (policy group -> emails) are members the
    identity provider gave at login, beside those the policy declares.
    `compiled`: the index `compile_views` built from these same arguments
    (in a worker thread), else it is built here. `records`: `nodes` by id
    and the only ids whose records may differ from `previous_nodes` (a
    superset; else every node is compared).
    """
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
            against=previous.compiled if previous is not None else None,
        )
    compiled = reuse_previous(compiled, previous.compiled if previous is not None else None)
    index = compiled.visibility
    lender = reuse or previous
    donor = lender.compiled.visibility if lender is not None else None
    # `reuse_previous` lent `previous`'s views already (a pass over every node):
    # a settle, where `reuse` is `previous`, must not pay it twice.
    adopted = previous.compiled.visibility if previous is not None else None
    if isinstance(index, ViewIndex) and isinstance(donor, ViewIndex) and donor is not adopted:
        index.lend(donor)
    views = PolicyViews(compiled)
    if previous is not None and previous_nodes is not None and compiled.changed is not None:
        by_id, ids = records if records is not None else ({n.id: n for n in nodes}, None)
        views.changed = _changed_ids(compiled.changed, previous, previous_nodes, views, by_id, ids)
    return views


def _changed_ids(
    policy_changed: frozenset[int],
    old: PolicyViews,
    old_nodes: Mapping[int, Node],
    new: PolicyViews,
    new_nodes: Mapping[int, Node],
    ids: AbstractSet[int] | None = None,
) -> frozenset[int]:
    """Nodes whose maps may differ: those the policy says, plus every node
    whose record changed in a way the policy does not see (a new key, an
    expiry) and the nodes that see it. `ids`: the only nodes whose records
    may have changed (else every node is compared)."""
    out = set(policy_changed)
    for node_id in old_nodes.keys() | new_nodes.keys() if ids is None else ids:
        was, now = old_nodes.get(node_id), new_nodes.get(node_id)
        if was is not now and was != now:  # unchanged records are the same objects
            out.add(node_id)
            out.update(old.visible_to(node_id))
            out.update(new.visible_to(node_id))
    return frozenset(out)
