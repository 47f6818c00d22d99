"""Which views a change can touch, so the next index reuses the others.

Two changes leave most views as they were: nodes joining, leaving or
changing under the same policy (a join), and a new policy over the same nodes
(a commit). For each, the nodes whose view may differ are found from what
changed (the nodes, or the resolved rules), never by visiting node pairs.
Anything else counts as a change to every view.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from .bitsets import bits

if TYPE_CHECKING:
    from .viewindex import ViewIndex


def affected(previous: ViewIndex, current: ViewIndex) -> frozenset[str] | None:
    """Names whose views may differ between the two indexes (None: possibly all)."""
    if previous.topology.users != current.topology.users or previous.tailnet != current.tailnet:
        return None
    if previous.policy is current.policy or previous.policy == current.policy:
        return _topology_affected(previous, current)
    if previous.topology.nodes == current.topology.nodes:
        mask = _policy_affected(previous, current)
        return None if mask is None else frozenset(current.names[i] for i in bits(mask))
    return None


def _topology_affected(previous: ViewIndex, current: ViewIndex) -> frozenset[str] | None:
    """When nodes without routes join, leave or change, only they and the
    nodes that see them (before or after) are affected: a node enters another
    node's view only through a rule that makes the two see each other."""
    old_nodes = dict(zip(previous.names, previous.topology.nodes, strict=True))
    new_nodes = dict(zip(current.names, current.topology.nodes, strict=True))
    if len(old_nodes) != len(previous.names) or len(new_nodes) != len(current.names):
        return None
    changed_old = [n for n, rec in old_nodes.items() if new_nodes.get(n) != rec]
    changed_new = [n for n, rec in new_nodes.items() if old_nodes.get(n) != rec]
    if any(previous.table.enabled[previous.position[n]] for n in changed_old) or any(
        current.table.enabled[current.position[n]] for n in changed_new
    ):
        return None
    # Output follows registration order; the nodes that stay must keep theirs.
    kept_old = [n for n in previous.names if n in new_nodes]
    kept_new = [n for n in current.names if n in old_nodes]
    if kept_old != kept_new:
        return None
    out = set(changed_old) | set(changed_new)
    for n in changed_old:
        out.update(previous.dependents(n))
    for n in changed_new:
        out.update(current.dependents(n))
    return frozenset(out)


def _policy_affected(previous: ViewIndex, current: ViewIndex) -> int | None:
    """Bitset of the nodes a new policy over the same nodes may show
    something else.

    A node's view is made of the filter rules it receives (in order), the
    rules it is a source of (its peers, and which routes it is shown), its
    SSH rules, its nodeAttrs and the route table. Rules are compared by what
    they resolved to, so a group edit affects exactly the rules (and nodes)
    it changes the resolution of.
    """
    if previous.table != current.table or previous.no_v4 != current.no_v4:
        return None  # routes and IPv4 shape every viewer's peers
    ids: dict[tuple[Any, ...], int] = {}
    old_ids = _rule_ids(previous, ids)
    new_ids = _rule_ids(current, ids)
    old_count, new_count = Counter(old_ids.values()), Counter(new_ids.values())
    differing = (old_count - new_count).keys() | (new_count - old_count).keys()
    mask = current.ssh.changed_since(previous.ssh)
    for index, rule_ids in ((previous, old_ids), (current, new_ids)):
        for rule in index.rules:
            if rule_ids[id(rule)] in differing:
                mask |= rule.src_mask  # its destinations are caught below
    for i, (old_rules, new_rules) in enumerate(
        zip(previous.per_node, current.per_node, strict=True)
    ):
        if [old_ids[id(r)] for r in old_rules] != [new_ids[id(r)] for r in new_rules]:
            mask |= 1 << i
        elif previous.caps[i] != current.caps[i]:
            mask |= 1 << i
    return mask


def _rule_ids(index: ViewIndex, ids: dict[tuple[Any, ...], int]) -> dict[int, int]:
    """id(rule) -> a number shared by every rule with the same key."""
    tables = {id(index.index.ips): "ips", id(index.index.host_prefix_table): "prefixes"}
    return {id(r): ids.setdefault(r.key(tables), len(ids)) for r in index.rules}
