"""Joins without a full rebuild: the index for more nodes, grown from the last.

When nodes without routes join (as the newest nodes) under the same policy,
users and groups, every alias resolves node by node, so each newcomer only
adds itself to the sources and destinations of the rules that name it.
Which ones is found by compiling the policy over the newcomers alone
(positions line up: the policy makes the same sequence of rules, and of parts
per rule, over any node set); each rule of the earlier index then gains their
bits, and every other node keeps its own list of rules. The result equals ``ViewIndex(...)`` built
from scratch, which the property test in ``tests/unit/test_policy_extend.py``
checks view by view. Anything else returns the reason it was not grown, and
the caller builds the whole index.
"""

from __future__ import annotations

from bisect import insort
from collections.abc import Iterable, Mapping, Sequence
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
    if len(keys) <= n or len(topology.nodes) != len(keys):
        return "no node joined" if len(keys) == n else "nodes left"
    if tuple(keys[:n]) != previous.keys or any(k in previous.position for k in keys[n:]):
        return "node order moved"
    if topology.nodes[:n] != old.nodes:
        return "other nodes changed"
    if any(node.routable_ips for node in topology.nodes[n:]):
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
    """The index of ``topology`` (``previous``'s nodes and newcomers after
    them), grown from ``previous``; else why not (see `why_not`)."""
    reason = why_not(previous, policy, topology, keys)
    if reason is None and tailnet != previous.tailnet:
        reason = "tailnet settings changed"
    if reason is not None:
        return reason
    n, count = len(previous.keys), len(keys) - len(previous.keys)
    fresh = Index(policy, Topology(topology.users, topology.nodes[n:], groups=topology.groups))
    fresh.set_routes([()] * count)
    builder = RuleBuilder(fresh)
    builder.add_policy(policy)
    if len(builder.slots) != len(previous.slots):
        return "rules do not line up"
    index = previous.index.extended(fresh)
    old = previous.index
    tables = {id(old.ips): index.ips, id(old.host_prefix_table): index.host_prefix_table}
    slots: list[Rule] = []
    lists = list(previous.per_node.lists)
    own: list[list[int]] = [[] for _ in range(count)]
    grown: dict[tuple[int, tuple[str, ...]], tuple[tuple[str, ...], int]] = {}
    for k, (was, alone) in enumerate(zip(previous.slots, builder.slots, strict=True)):
        rule = _grow_rule(was, alone, n, tables, grown)
        if rule is None:
            return "rule parts do not line up"
        slots.append(rule)
        if not rule.live:
            continue
        if not was.live:  # newcomers made it sent: the nodes it reached receive it now
            for i in was.dst_nodes:
                lists[i] = list(lists[i])
                insort(lists[i], k)
        for j in alone.dst_nodes:
            own[j].append(k)
    lists.extend(own)
    none = ((),) * count
    table = RouteTable(previous.table.enabled + none, previous.table.primary + none)
    caps = [*previous.caps, *self_cap_maps(policy, fresh, tailnet)]
    parts = (index, table, NodeRules(slots, lists), caps)
    return ViewIndex.assemble(policy, topology, keys, tailnet, parts, keep_views=keep_views)


def _grow_rule(
    was: Rule,
    alone: Rule,
    n: int,
    tables: Mapping[int, Sequence[Sequence[str]]],
    grown: dict[tuple[int, tuple[str, ...]], tuple[tuple[str, ...], int]],
) -> Rule | None:
    """Rule ``was`` with the newcomers (from ``n`` on) added where ``alone``
    (the same rule over the newcomers alone, from 0) names them; None when
    the two do not line up."""
    if len(was.parts) != len(alone.parts):
        return None
    parts = []
    for p, q in zip(was.parts, alone.parts, strict=True):
        addrs = None if p.addrs is None else tables.get(id(p.addrs))
        if addrs is None and p.addrs is not None:
            return None
        nodes = p.nodes | {n + j for j in q.nodes} if q.nodes else p.nodes
        parts.append(DstPart(nodes, p.ports, addrs, p.text))
    src_ips, src_n = was.src_ips, was.src_n
    if alone.src_n:  # their own addresses join the rendered sources, after the other nodes'
        texts = alone.src_ips[: alone.src_n]
        key = (id(src_ips), texts)
        known = grown.get(key)
        if known is None:
            new = set(texts)
            rest = tuple(t for t in src_ips[src_n:] if t not in new)
            known = grown[key] = ((*src_ips[:src_n], *texts, *rest), src_n + len(texts))
        src_ips, src_n = known
    members, dst = alone.src_members, alone.dst_nodes
    return Rule(
        src_ips=src_ips,
        src_members=was.src_members | {n + j for j in members} if members else was.src_members,
        protos=was.protos,
        caps=was.caps,
        via=was.via,
        hidden=was.hidden,
        src_mask=was.src_mask | _mask(members, n),
        dst_mask=was.dst_mask | _mask(dst, n),
        src_n=src_n,
        parts=parts,
        dst_nodes=was.dst_nodes | {n + j for j in dst} if dst else was.dst_nodes,
    )


def _mask(nodes: Iterable[int], n: int) -> int:
    """The newcomers ``nodes`` (numbered from 0) as bits from ``n`` on."""
    mask = 0
    for j in nodes:
        mask |= 1 << (n + j)
    return mask
