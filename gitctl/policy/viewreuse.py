"""Which views a change can touch, so the next index reuses the others.

Two changes leave most views as they were: nodes joining, leaving or
changing under the same policy (a join), and a new policy over the same nodes
(a commit). For each, the nodes whose view may differ are found from what
changed (the nodes, or the resolved rules), never by visiting node pairs.
Anything else counts as a change to every view. When one node joins or
leaves, the views it only adds a peer to or removes one from are patched
rather than rebuilt (`peer_change`; nodes joining, `joinviews`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from itertools import chain, compress, count
from operator import ne
from typing import TYPE_CHECKING, Any, Generic

from .bitsets import bits, bitset
from .joinviews import JoinChange, join_change, renders
from .output import NodeKey

if TYPE_CHECKING:
    from .viewindex import ViewIndex


def affected(
    previous: ViewIndex[NodeKey], current: ViewIndex[NodeKey]
) -> frozenset[NodeKey] | None:
    """Keys whose views may differ between the two indexes (None: possibly all)."""
    if (
        previous.topology.users != current.topology.users
        or previous.topology.groups != current.topology.groups
        or previous.tailnet != current.tailnet
    ):
        return None
    if previous.policy is current.policy or previous.policy == current.policy:
        return _topology_affected(previous, current)
    if previous.topology.nodes == current.topology.nodes:
        mask = _policy_affected(previous, current)
        return None if mask is None else frozenset(current.keys[i] for i in bits(mask))
    return None


def same_visibility(previous: ViewIndex[NodeKey], current: ViewIndex[NodeKey]) -> bool:
    """Whether every node sees exactly the nodes it saw in ``previous`` (an
    index of the same nodes, in the same order): what `ViewIndex.visible`
    is made of, the live rules' sources and destinations and the SSH rules,
    resolved alike. A commit that changes only ports or protocols keeps it,
    so no view's peers need working out again."""
    if previous.keys != current.keys or previous.topology.nodes != current.topology.nodes:
        return False
    if current.ssh.changed_since(previous.ssh):
        return False
    return _reach_pairs(previous) == _reach_pairs(current)


def _reach_pairs(index: ViewIndex[NodeKey]) -> set[tuple[int, int]]:
    """(sources, destinations) of each live rule, as bitsets."""
    return {(r.src_mask, r.dst_mask) for r in index.rules}


def _topology_affected(
    previous: ViewIndex[NodeKey], current: ViewIndex[NodeKey]
) -> frozenset[NodeKey] | None:
    """When nodes without routes join, leave or change, only they and the
    nodes that see them (before or after) are affected: a node enters another
    node's view only through a rule that makes the two see each other."""
    had = len(previous.keys)
    if current.keys[:had] == previous.keys and current.topology.nodes[:had] == (
        previous.topology.nodes
    ):
        # nodes joined after the others, which stay as they were (a join)
        joined = current.keys[had:]
        if any(current.table.enabled[had:]):
            return None
        out = set(joined)
        for key in joined:
            out.update(current.dependents(key))
        return frozenset(out)
    if len(current.keys) == had - 1:
        # one node left and the others stay as they were (compared in C)
        gone = previous.position.keys() - current.position.keys()
        if len(gone) == 1:
            (key,) = gone
            p = previous.position[key]
            old = previous.topology.nodes
            if (
                current.keys == previous.keys[:p] + previous.keys[p + 1 :]
                and current.topology.nodes == old[:p] + old[p + 1 :]
            ):
                if previous.table.enabled[p]:
                    return None
                return frozenset({key, *previous.dependents(key)})
    old_nodes = dict(zip(previous.keys, previous.topology.nodes, strict=True))
    new_nodes = dict(zip(current.keys, current.topology.nodes, strict=True))
    if len(old_nodes) != len(previous.keys) or len(new_nodes) != len(current.keys):
        return None
    # (the server passes the same record objects for unchanged nodes: compare
    # identity first, not every field)
    changed_old = [n for n, rec in old_nodes.items() if not _same(new_nodes.get(n), rec)]
    changed_new = [n for n, rec in new_nodes.items() if not _same(old_nodes.get(n), rec)]
    if any(previous.table.enabled[previous.position[n]] for n in changed_old) or any(
        current.table.enabled[current.position[n]] for n in changed_new
    ):
        return None
    # Output follows registration order; the nodes that stay must keep theirs.
    kept_old = [n for n in previous.keys if n in new_nodes]
    kept_new = [n for n in current.keys if n in old_nodes]
    if kept_old != kept_new:
        return None
    out = set(changed_old) | set(changed_new)
    for n in changed_old:
        out.update(previous.dependents(n))
    for n in changed_new:
        out.update(current.dependents(n))
    return frozenset(out)


def _same(a: object, b: object) -> bool:
    return a is b or a == b


def _policy_affected(previous: ViewIndex[NodeKey], current: ViewIndex[NodeKey]) -> int | None:
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
    old_lists, new_lists = previous.per_node.lists, current.per_node.lists
    # Per node, its slots before and after; nodes alike (a user's under
    # autogroup:self) share the verdict, worked out once per pair. The pass
    # over the nodes is in C, and the mask is built once: OR-ing bit by bit
    # copies a 50,000-bit int per node.
    pairs = list(zip(map(tuple, old_lists), map(tuple, new_lists), strict=True))
    old_at = [old_ids.get(id(r)) for r in previous.slots]
    new_at = [new_ids.get(id(r)) for r in current.slots]
    differs = {
        pair: [old_at[k] for k in pair[0]] != [new_at[k] for k in pair[1]]
        for pair in dict.fromkeys(pairs)
    }
    touched = compress(count(), map(differs.__getitem__, pairs))
    caps_changed = compress(count(), map(ne, previous.caps, current.caps))
    return mask | bitset(chain(touched, caps_changed), len(new_lists))


def _rule_ids(index: ViewIndex[NodeKey], ids: dict[tuple[Any, ...], int]) -> dict[int, int]:
    """id(rule) -> a number shared by every rule with the same key."""
    tables = {id(index.index.ips): "ips", id(index.index.host_prefix_table): "prefixes"}
    return {id(r): ids.setdefault(r.key(tables), len(ids)) for r in index.rules}


@dataclass(frozen=True, slots=True)
class PeerChange(Generic[NodeKey]):
    """The change was one node without routes leaving, and nothing else:
    ``viewers`` are the nodes whose view it changes only by removing that
    node from their peers. (Joins: `joinviews.JoinChange`.)"""

    key: NodeKey
    viewers: frozenset[NodeKey]


def peer_change(
    previous: ViewIndex[NodeKey], current: ViewIndex[NodeKey], changed: frozenset[NodeKey]
) -> PeerChange[NodeKey] | JoinChange[NodeKey] | None:
    """What a join or leave did, when ``changed`` (what `affected` said) came
    from nodes joining last (`joinviews.join_change`) or exactly one node
    leaving; None otherwise.

    A node V that saw the leaver L keeps everything but its peers when:
    * L was not among the rendered sources (``SrcIPs``) of any filter rule V
      receives (a source that only covers L, as ``*`` or a prefix does,
      renders alike without it);
    * no SSH rule with L as a source or destination reached V (`SshIndex.touching`);
    * V's own capabilities (nodeAttrs) are the same.
    Every alias resolves to the nodes matching it one by one, so L's going
    removes L alone from every rule's sources and destinations: V's other
    peers, their PeerViews (no route moved: L had none, and `affected` gives
    up on route changes) and V's rules stay.
    """
    if len(current.keys) > len(previous.keys):
        return join_change(previous, current, changed)
    if len(previous.keys) != len(current.keys) + 1:
        return None
    gone = [n for n in changed if n not in current.position]
    if len(gone) != 1:
        return None
    name = gone[0]
    old_at, new_at = previous.position, current.position
    old_nodes, new_nodes = previous.topology.nodes, current.topology.nodes
    for n in changed:  # every other node that came, went or changed is named here
        if n != name and (
            n not in old_at or n not in new_at or old_nodes[old_at[n]] != new_nodes[new_at[n]]
        ):
            return None
    j = previous.position[name]
    touched = renders(previous, j) | previous.ssh.touching(j) | 1 << j
    viewers = (previous.keys[i] for i in bits(previous.visible(j) & ~touched))
    return PeerChange(
        name,
        frozenset(
            v
            for v in viewers
            if previous.caps[previous.position[v]] == current.caps[current.position[v]]
        ),
    )
