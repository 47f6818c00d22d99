"""Views that nodes joining change by the peers they add and the sources
they add to filters, and by nothing else.

Under autogroup:self a node joining its user changes each of the user's
other nodes' views twice over: it is a new peer, and its addresses join the
sources of their own rule. Building those views anew worked out who they
see, their SSH policy and their own fields again, per member, at every
join (a 25-node user: 24 views a registration). Instead a member's view is
its earlier one with the newcomers it sees added to its peers (its earlier
who-sees-whom plus theirs) and, where its rules' rendered sources name a
newcomer, the filter taken anew (`FilterShapes`: one shape per user's rule
list, so per member only its own address texts are put in).

That holds for a viewer V of the newcomers when, beside them joining, no
other node came, went or changed, no route moved (`affected` gives up on
those), no SSH rule with a newcomer as source or destination reaches V
(`SshIndex.touching`) and V's capabilities (nodeAttrs) are the same: every
alias resolves node by node, so a newcomer adds itself alone to each rule's
sources and destinations, and V's other peers, their PeerViews and its
rules' other sources stay.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic

from .bitsets import bits, bitset
from .output import NodeKey

if TYPE_CHECKING:
    from collections.abc import Mapping

    from .viewindex import ViewIndex

__all__ = ["JoinChange", "join_change", "renders"]


@dataclass(frozen=True, slots=True)
class JoinChange(Generic[NodeKey]):
    """Nodes without routes joined (as the newest nodes), and nothing else
    changed. ``viewers``: the earlier nodes whose views the joins change only
    as the module says; ``seen``: per viewer position, the newcomers it sees
    (bits); ``refilter``: the viewer positions whose filter is taken anew."""

    viewers: frozenset[NodeKey]
    seen: Mapping[int, int]
    refilter: frozenset[int]


def join_change(
    previous: ViewIndex[NodeKey], current: ViewIndex[NodeKey], changed: frozenset[NodeKey]
) -> JoinChange[NodeKey] | None:
    """What the newcomers of ``current`` (the nodes after ``previous``'s,
    which keep their places) did to the earlier nodes' views, when
    ``changed`` (what `affected` said) names no other node that came, went
    or changed; None otherwise."""
    had = len(previous.keys)
    keys = current.keys
    if len(keys) <= had or keys[:had] != previous.keys:
        return None
    old_at = previous.position
    old_nodes, new_nodes = previous.topology.nodes, current.topology.nodes
    for key in changed:  # the newcomers and the earlier nodes that see them
        at = old_at.get(key)
        if at is not None and old_nodes[at] is not new_nodes[at] and old_nodes[at] != new_nodes[at]:
            return None
    seen_by: dict[int, int] = {}
    touched = 0
    for j in range(had, len(keys)):
        touched |= current.ssh.touching(j)
        for v in bits(current.visible(j) & ((1 << had) - 1)):
            seen_by[v] = seen_by.get(v, 0) | 1 << j
    old_caps, new_caps = previous.caps, current.caps
    seen = {
        v: joiners
        for v, joiners in seen_by.items()
        if not touched >> v & 1 and (old_caps[v] is new_caps[v] or old_caps[v] == new_caps[v])
    }
    named = 0
    for j in range(had, len(keys)):
        named |= renders(current, j)
    return JoinChange(
        frozenset(keys[v] for v in seen),
        seen,
        frozenset(v for v in seen if named >> v & 1),
    )


def renders(index: ViewIndex[NodeKey], j: int) -> int:
    """Nodes receiving a rule whose rendered sources name node ``j``."""
    ips = index.index.ips[j]
    mask = 0
    for rule in index.rules:
        if j in rule.src_members and not rule.src_key.isdisjoint(ips):
            mask |= bitset(rule.dst_nodes, len(index.keys))
    return mask
