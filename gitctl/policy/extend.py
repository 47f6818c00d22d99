"""A join without a full rebuild: the index for one more node, grown from the last.

When one node without routes joins (as the newest node) under the same
policy, users and groups, every alias resolves node by node, so the newcomer
J only adds itself to the sources and destinations of the rules that name it.
Which ones is found by compiling the policy over J alone (positions line up:
the policy makes the same sequence of rules, and of parts per rule, over any
node set); each rule of the earlier index then gains J's bit, and every other
node keeps its own list of rules. The result equals ``ViewIndex(...)`` built
from scratch, which the property test in ``tests/unit/test_policy_extend.py``
checks view by view. Anything else returns the reason it was not grown, and
the caller builds the whole index.
"""

from __future__ import annotations

from bisect import insort
from collections.abc import Mapping, Sequence
from typing import Any

from .aliases import Index
from .filter import SELF, DstPart, NodeRules, Rule, RuleBuilder
from .model import Policy
from .nodeattrs import self_cap_maps
from .output import NodeKey
from .routes import RouteTable
from .topology import Topology
from .viewindex import ViewIndex


def why_not(
    previous: ViewIndex[NodeKey],
    policy: Policy,
    topology: Topology,
    keys: Sequence[NodeKey],
) -> str | None:
    """Why the index for ``topology`` cannot be grown from ``previous`` (None: it can)."""
    n = len(previous.keys)
    old = previous.topology
    if len(keys) != n + 1 or len(topology.nodes) != n + 1:
        return "not one node more"
    if keys[n] in previous.position or tuple(keys[:n]) != previous.keys:
        return "node order moved"
    if topology.nodes[:n] != old.nodes:
        return "other nodes changed"
    if topology.nodes[n].routable_ips:
        return "routes"
    if topology.users != old.users or topology.groups != old.groups:
        return "users or groups changed"
    if previous.index.routers and dict(topology.primaries) != dict(old.primaries):
        return "primaries moved"
    if not (previous.policy is policy or previous.policy == policy):
        return "policy changed"
    if (
        policy.default_src_posture
        or any(a.src_posture for a in policy.acls)
        or any(g.src_posture for g in policy.grants)
    ):
        return "device posture"
    if any(d.alias == SELF for a in policy.acls for d in a.dst) or any(
        SELF in g.dst for g in policy.grants
    ):
        return "autogroup:self"
    return None


def extend_index(
    previous: ViewIndex[NodeKey],
    policy: Policy,
    topology: Topology,
    keys: Sequence[NodeKey],
    tailnet: Mapping[str, Any] | None = None,
    *,
    keep_views: bool = True,
) -> ViewIndex[NodeKey] | str:
    """The index of ``topology`` (``previous``'s nodes and one more), grown
    from ``previous``; else why not (see `why_not`)."""
    reason = why_not(previous, policy, topology, keys)
    if reason is None and tailnet != previous.tailnet:
        reason = "tailnet settings changed"
    if reason is not None:
        return reason
    n = len(previous.keys)
    one = Index(policy, Topology(topology.users, topology.nodes[n:], groups=topology.groups))
    one.set_routes([()])
    builder = RuleBuilder(one)
    builder.add_policy(policy)
    if len(builder.slots) != len(previous.slots):
        return "rules do not line up"
    index = previous.index.extended(one)
    old = previous.index
    tables = {id(old.ips): index.ips, id(old.host_prefix_table): index.host_prefix_table}
    slots: list[Rule] = []
    lists = list(previous.per_node.lists)
    own: list[int] = []
    grown: dict[int, tuple[tuple[str, ...], int]] = {}
    for k, (was, alone) in enumerate(zip(previous.slots, builder.slots, strict=True)):
        rule = _grow_rule(was, alone, n, one.ips[0], tables, grown)
        if rule is None:
            return "rule parts do not line up"
        slots.append(rule)
        if not rule.live:
            continue
        if not was.live:  # J made it sent: the nodes it already reached receive it now
            for i in was.dst_nodes:
                lists[i] = list(lists[i])
                insort(lists[i], k)
        if rule.dst_mask >> n & 1:
            own.append(k)
    lists.append(own)
    table = RouteTable(previous.table.enabled + ((),), previous.table.primary + ((),))
    caps = [*previous.caps, self_cap_maps(policy, one, tailnet)[0]]
    parts = (index, table, NodeRules(slots, lists), caps)
    return ViewIndex.assemble(policy, topology, keys, tailnet, parts, keep_views=keep_views)


def _grow_rule(
    was: Rule,
    alone: Rule,
    n: int,
    ips: tuple[str, ...],
    tables: Mapping[int, Sequence[Sequence[str]]],
    grown: dict[int, tuple[tuple[str, ...], int]],
) -> Rule | None:
    """Rule ``was`` with node ``n`` added where ``alone`` (the same rule over
    node ``n`` alone, as 0) names it; None when the two do not line up."""
    if len(was.parts) != len(alone.parts):
        return None
    parts = []
    dst = False
    for p, q in zip(was.parts, alone.parts, strict=True):
        addrs = None if p.addrs is None else tables.get(id(p.addrs))
        if addrs is None and p.addrs is not None:
            return None
        if q.nodes:
            parts.append(DstPart(p.nodes | {n}, p.ports, addrs, p.text))
            dst = True
        else:
            parts.append(DstPart(p.nodes, p.ports, addrs, p.text))
    src_ips, src_n = was.src_ips, was.src_n
    if alone.src_n:  # J's own addresses join the rendered sources, after the other nodes'
        known = grown.get(id(src_ips))
        if known is None:
            rest = tuple(t for t in src_ips[src_n:] if t not in ips)
            known = grown[id(src_ips)] = ((*src_ips[:src_n], *ips, *rest), src_n + len(ips))
        src_ips, src_n = known
    src = bool(alone.src_members)
    return Rule(
        src_ips=src_ips,
        src_members=was.src_members | {n} if src else was.src_members,
        protos=was.protos,
        caps=was.caps,
        via=was.via,
        hidden=was.hidden,
        src_mask=was.src_mask | 1 << n if src else was.src_mask,
        dst_mask=was.dst_mask | 1 << n if dst else was.dst_mask,
        src_n=src_n,
        parts=parts,
        dst_nodes=was.dst_nodes | {n} if dst else was.dst_nodes,
    )
