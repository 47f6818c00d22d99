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
from dataclasses import replace
from typing import Any

from .addrs import span
from .aliases import Index
from .filter import DstPart, Rule
from .model import Alias, Policy
from .nodeattrs import self_cap_maps
from .noderules import NodeRules, SlotUses
from .output import NodeKey
from .routes import RouteTable
from .rulebuilder import RuleBuilder
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
    if not (previous.policy is policy or previous.policy == policy):
        return "policy changed"
    if len(keys) < n or len(topology.nodes) != len(keys):
        return "nodes left"
    if tuple(keys[:n]) != previous.keys or any(k in previous.position for k in keys[n:]):
        return "node order moved"
    if topology.nodes[:n] != old.nodes:
        return "other nodes changed"
    if any(node.routable_ips for node in topology.nodes[n:]):
        return "routes"
    if topology.users != old.users or topology.groups != old.groups:
        return "users or groups changed"
    if previous.index.routers and dict(topology.primaries) not in (
        dict(old.primaries),
        previous.primaries(),  # what it elected: the election keeps it
    ):
        return "primaries moved"
    if previous.slot_uses is not None or len(keys) == n:
        # grown under this policy before (its shape was checked), or nothing
        # the policy sees changed (a node re-keyed): the index serves again
        return None
    if (
        policy.default_src_posture
        or any(a.src_posture for a in policy.acls)
        or any(g.src_posture for g in policy.grants)
    ):
        return "device posture"
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
    if count == 0:  # the same index serves: only its view caches start empty
        same = (previous.index, previous.table, previous.per_node, previous.caps)
        out = ViewIndex.assemble(
            policy, topology, keys, tailnet, same, keep_views=keep_views, grown_from=previous
        )
        out.slot_uses, out.origin = previous.slot_uses, "reused"
        return out
    fresh = Index(policy, Topology(topology.users, topology.nodes[n:], groups=topology.groups))
    fresh.set_routes([()] * count)
    old = previous.index
    grown: tuple[list[Rule], list[list[int]]] | str
    uses: SlotUses | None = None
    # address tables not grown by another index, no via: the fast way, one
    # newcomer after the other when several under autogroup:self (per-user
    # rules would not line up at once), over one index grown by them all
    if (
        (count == 1 or previous.per_node.self_sources)
        and len(old.ips) == len(old.host_prefix_table) == n
        and not any(g.via for g in policy.grants)
    ):
        uses = previous.slot_uses or SlotUses(previous.slots)
        grown = _grow_each(previous, policy, topology, fresh if count == 1 else None, uses)
        if isinstance(grown, str):
            return grown
        index = old.extended(fresh)  # (after: it appends to the shared address tables)
    elif previous.per_node.self_sources:
        return "autogroup:self with via, or address tables grown elsewhere"
    else:
        index = old.extended(fresh)
        tables = {id(old.ips): index.ips, id(old.host_prefix_table): index.host_prefix_table}
        grown = _grow_all(previous, fresh, tables)
    if isinstance(grown, str):
        return grown
    none = ((),) * count
    table = RouteTable(previous.table.enabled + none, previous.table.primary + none)
    caps = [*previous.caps, *self_cap_maps(policy, fresh, tailnet)]
    parts = (index, table, NodeRules(*grown, previous.per_node.self_sources), caps)
    out = ViewIndex.assemble(
        policy, topology, keys, tailnet, parts, keep_views=keep_views, grown_from=previous
    )
    out.slot_uses = uses
    return out


# What a rule gains: the newcomers (numbered from 0) among its sources, the
# newcomers' addresses among its rendered sources, and per part the newcomers
# it reaches.
Gain = tuple[frozenset[int], tuple[str, ...], dict[int, frozenset[int]]]


def _self_gains(
    entries: Sequence[tuple[Alias, ...]], fresh: Index, uses: SlotUses
) -> dict[int, bool] | str:
    """The autogroup:self rules the one newcomer joins (its user's rule of
    each entry; True: as a source too), or why it cannot: it is its user's
    first source device for an entry, which makes a rule of its own."""
    email = fresh.email[0]
    out: dict[int, bool] = {}
    if email is None:
        return out
    for entry, aliases in enumerate(entries):
        source = any(fresh.resolve(a).members for a in aliases)
        k = uses.self_slots.get((entry, email))
        if k is not None:
            out[k] = source
        elif source:
            return "autogroup:self: a user's first device"
    return out


def _grow_each(
    previous: ViewIndex[NodeKey],
    policy: Policy,
    topology: Topology,
    alone: Index | None,
    uses: SlotUses,
) -> tuple[list[Rule], list[list[int]]] | str:
    """The newcomers of ``topology`` (after ``previous``'s nodes), each
    growing the rules in turn as if settled alone (``alone``: the index of
    the one newcomer, when there is one), without an index per newcomer;
    else why not."""
    n = len(previous.keys)
    slots, lists = list(previous.slots), list(previous.per_node.lists)
    for m, node in enumerate(topology.nodes[n:]):
        if alone is None or m:
            alone = Index(policy, Topology(topology.users, (node,), groups=topology.groups))
            alone.set_routes([()])
        selfs = _self_gains(previous.per_node.self_sources, alone, uses)
        if isinstance(selfs, str):
            return selfs
        previous.index.resolve_known(alone)  # (an index grown from it would)
        _grow_one(slots, lists, n + m, alone, uses, selfs)
    return slots, lists


def _grow_one(
    slots: list[Rule],
    lists: list[list[int]],
    n: int,
    fresh: Index,
    uses: SlotUses,
    selfs: Mapping[int, bool],
) -> None:
    """One newcomer (node ``n``, after the nodes of ``lists``): only the
    slots whose aliases or texts name it change, in ``slots``, found through
    ``uses`` (and ``selfs``, see `_self_gains`); every other rule stays the
    very object. Its list of slots is appended to ``lists``."""
    gains: dict[int, tuple[set[int], list[str], dict[int, frozenset[int]]]] = {}
    just = frozenset({0})

    def gain(k: int) -> tuple[set[int], list[str], dict[int, frozenset[int]]]:
        g = gains.get(k)
        if g is None:
            g = gains[k] = (set(), [], {})
        return g

    ips = fresh.ips[0]
    for alias, r in list(fresh.resolutions().items()):
        if not r.members:
            continue
        for k in uses.src.get(alias, ()):
            src, texts, _ = gain(k)
            src.add(0)
            if r.nodes and not texts:
                texts.extend(ips)
        if r.nodes:
            for k, p in uses.by_alias.get(alias, ()):
                gain(k)[2][p] = just
    for k, source in selfs.items():  # its user's rules: it is one of their destinations
        src, texts, parts = gain(k)
        if source:
            src.add(0)
            texts.extend(ips)
        parts.update(dict.fromkeys(range(len(slots[k].parts)), just))
    for (kind, text), places in uses.other.items():
        if (
            kind == "all"
            or (kind == "covering" and fresh.covering(span(text)))
            or (kind == "in" and fresh.nodes_in(text))
        ):
            for k, p in places:
                gain(k)[2][p] = just
    own: list[int] = []
    grown: dict[tuple[int, tuple[str, ...]], tuple[tuple[str, ...], int]] = {}
    for k in sorted(gains):
        src, texts, parts = gains[k]
        was = slots[k]
        if not was.parts:
            # No destinations, now or ever (joins only fill parts): never
            # sent, so its sources (autogroup:self's, every member's) stay.
            continue
        rule = slots[k] = _grow_rule(was, n, (frozenset(src), tuple(texts), parts), grown)
        if rule.live:
            _received(lists, was, k)
            if parts:
                own.append(k)
    lists.append(own)


def _grow_all(
    previous: ViewIndex[NodeKey], fresh: Index, tables: Mapping[int, Sequence[Sequence[str]]]
) -> tuple[list[Rule], list[list[int]]] | str:
    """Any number of newcomers: the policy compiled over them alone says
    what each rule gains; every rule is made again (over ``tables``)."""
    builder = RuleBuilder(fresh)
    builder.add_policy(previous.policy)
    if len(builder.slots) != len(previous.slots):
        return "rules do not line up"
    n, count = len(previous.keys), len(fresh.nodes)
    slots: list[Rule] = []
    lists = list(previous.per_node.lists)
    own: list[list[int]] = [[] for _ in range(count)]
    grown: dict[tuple[int, tuple[str, ...]], tuple[tuple[str, ...], int]] = {}
    for k, (was, alone) in enumerate(zip(previous.slots, builder.slots, strict=True)):
        if len(was.parts) != len(alone.parts):
            return "rule parts do not line up"
        more = {p: frozenset(q.nodes) for p, q in enumerate(alone.parts) if q.nodes}
        texts = alone.src_ips[: alone.src_n]
        if any(p.addrs is not None and id(p.addrs) not in tables for p in was.parts):
            return "address tables moved"
        moved = [
            DstPart(
                p.nodes, p.ports, None if p.addrs is None else tables[id(p.addrs)], p.text, p.source
            )
            for p in was.parts
        ]
        was = _with_parts(was, moved)
        rule = _grow_rule(was, n, (alone.src_members, texts, more), grown)
        slots.append(rule)
        if rule.live:
            _received(lists, was, k)
            for j in alone.dst_nodes:
                own[j].append(k)
    lists.extend(own)
    return slots, lists


def _received(lists: list[list[int]], was: Rule, k: int) -> None:
    """Slot ``k`` is sent now; if it was not, the nodes it reached before
    receive it now too (the newcomers made its sources or capabilities)."""
    if not was.live:
        for i in was.dst_nodes:
            lists[i] = list(lists[i])
            insort(lists[i], k)


def _with_parts(rule: Rule, parts: list[DstPart]) -> Rule:
    """A copy of ``rule`` with other parts (its cached source set dropped: the copy's may grow)."""
    return replace(rule, parts=parts, _src_key=None)


def _grow_rule(
    was: Rule,
    n: int,
    gain: Gain,
    grown: dict[tuple[int, tuple[str, ...]], tuple[tuple[str, ...], int]],
) -> Rule:
    """Rule ``was`` with what the newcomers (numbered from ``n`` on) add to it."""
    members, texts, more = gain
    parts = list(was.parts)
    dst: set[int] = set()
    for p, nodes in more.items():
        part = parts[p]
        parts[p] = DstPart(
            part.nodes | {n + j for j in nodes}, part.ports, part.addrs, part.text, part.source
        )
        dst.update(nodes)
    src_ips, src_n = was.src_ips, was.src_n
    if texts:  # their own addresses join the rendered sources, after the other nodes'
        key = (id(src_ips), texts)
        known = grown.get(key)
        if known is None:
            new = set(texts)
            rest = tuple(t for t in src_ips[src_n:] if t not in new)
            known = grown[key] = ((*src_ips[:src_n], *texts, *rest), src_n + len(texts))
        src_ips, src_n = known
    rule = _with_parts(was, parts)
    rule.src_ips, rule.src_n = src_ips, src_n
    if members:
        rule.src_members = was.src_members | {n + j for j in members}
        rule.src_mask = was.src_mask | _mask(members, n)
    if dst:
        rule.dst_nodes = was.dst_nodes | {n + j for j in dst}
        rule.dst_mask = was.dst_mask | _mask(dst, n)
    return rule


def _mask(nodes: Iterable[int], n: int) -> int:
    """The newcomers ``nodes`` (numbered from 0) as bits from ``n`` on."""
    mask = 0
    for j in nodes:
        mask |= 1 << (n + j)
    return mask
