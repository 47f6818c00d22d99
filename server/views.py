"""Per-node policy views: what each node may see and accept, for one
(snapshot, node set) pair.

This is the server's only visibility function: full maps and every delta are
built from the same `PolicyViews`, so an incremental path can never show a
peer that the policy hides. Views are recomputed only when the snapshot or the
set of nodes (join, leave, rename, tags, routes) changes, never for endpoint,
DERP or online changes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from server.store.model import Node

__all__ = [
    "NodeView",
    "PeerView",
    "PolicyViews",
    "compute_views",
    "to_topology_node",
    "topology_name",
]

ALLOW_ALL_FILTER: tuple[dict[str, Any], ...] = (
    {"SrcIPs": ["*"], "DstPorts": [{"IP": "*", "Ports": {"First": 0, "Last": 65535}}]},
)


@dataclass(frozen=True, slots=True)
class PeerView:
    allowed_ips: tuple[str, ...]
    primary_routes: tuple[str, ...] = ()
    cap_map: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class NodeView:
    packet_filter: tuple[Mapping[str, Any], ...]
    ssh_policy: Mapping[str, Any]
    peers: Mapping[int, PeerView]
    self_cap_map: Mapping[str, Any]
    self_allowed_ips: tuple[str, ...]
    self_primary_routes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PolicyViews:
    by_node: Mapping[int, NodeView]

    def get(self, node_id: int) -> NodeView | None:
        return self.by_node.get(node_id)

    def visible_to(self, node_id: int) -> Sequence[int]:
        """Nodes that can see `node_id` (visibility is symmetric in Tailscale)."""
        view = self.by_node.get(node_id)
        return list(view.peers) if view is not None else []


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
    try:
        hostinfo = json.loads(node.hostinfo or "{}")
    except ValueError:
        return ()
    routes = hostinfo.get("RoutableIPs") or []
    return tuple(r for r in routes if isinstance(r, str))


def to_topology_node(node: Node, approved: tuple[str, ...]) -> Any:
    """The policy compiler's view of a registered node."""
    from gitctl.policy import TopologyNode

    return TopologyNode(
        name=topology_name(node),
        hostname=node.given_name,
        user=node.user if not node.tags else None,
        tags=tuple(node.tags),
        ipv4=str(node.ipv4) if node.ipv4 is not None else None,
        ipv6=str(node.ipv6) if node.ipv6 is not None else None,
        routable_ips=advertised_routes(node),
        approved_routes=approved,
    )


def _allow_all(nodes: Sequence[Node]) -> PolicyViews:
    peers_of = {n.id: PeerView(own_prefixes(n)) for n in nodes}
    views = {}
    for node in nodes:
        views[node.id] = NodeView(
            packet_filter=ALLOW_ALL_FILTER,
            ssh_policy={"rules": []},
            peers={pid: pv for pid, pv in peers_of.items() if pid != node.id},
            self_cap_map={},
            self_allowed_ips=own_prefixes(node),
        )
    return PolicyViews(views)


def compute_views(
    policy: Any,
    users: Sequence[tuple[int, str, str]],
    nodes: Sequence[Node],
    approved_routes: Mapping[int, tuple[str, ...]],
) -> PolicyViews:
    """Compile `policy` against the live nodes.

    `policy` is the parsed policy of the serving snapshot (None = allow-all);
    `users` are (id, name, email); `approved_routes` maps node id to the
    routes it advertises that are approved.
    """
    if policy is None:
        return _allow_all(nodes)
    from gitctl.policy import Topology, TopologyUser, compile_tailnet

    topo = Topology(
        users=tuple(TopologyUser(id=uid, name=name, email=email) for uid, name, email in users),
        nodes=tuple(to_topology_node(n, approved_routes.get(n.id, ())) for n in nodes),
    )
    # The policy's `tests` were checked when the commit was loaded (against its own
    # users and tags); live nodes coming and going must not un-serve a policy.
    compiled = compile_tailnet(policy, topo, enforce_tests=False)
    views = {}
    for node in nodes:
        nv = compiled.nodes[topology_name(node)]
        views[node.id] = NodeView(
            packet_filter=tuple(nv.packet_filter_rules),
            ssh_policy=nv.ssh_policy or {"rules": []},
            peers={
                int(name): PeerView(
                    allowed_ips=tuple(pv.allowed_ips),
                    primary_routes=tuple(pv.primary_routes or ()),
                    cap_map=dict(pv.cap_map or {}),
                )
                for name, pv in nv.peers.items()
            },
            self_cap_map=dict(nv.self_cap_map or {}),
            self_allowed_ips=tuple(nv.self_allowed_ips or own_prefixes(node)),
            self_primary_routes=tuple(nv.self_primary_routes or ()),
        )
    return PolicyViews(views)
