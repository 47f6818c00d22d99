"""The node map and online set a new `MapContext` holds: the last context's
own persistent objects with what changed set in them, so building a context
costs what changed, not a copy of the tailnet; equal values kept as the very
objects the last context had, so sessions skip them by identity."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from typing import TypeVar

from server.store.model import Node
from server.tailnet.persistent import PersistentIds, PersistentMap

__all__ = ["node_map", "online_set", "same"]

_T = TypeVar("_T")


def same(new: _T, held: _T | None) -> _T:
    """`held` when it is equal to `new` (sessions then skip it by identity)."""
    return held if held is not None and (held is new or held == new) else new


def node_map(
    held: Mapping[int, Node],
    nodes: Sequence[Node],
    records: tuple[Mapping[int, Node], AbstractSet[int]] | None = None,
) -> Mapping[int, Node]:
    """id -> node of `nodes`: `held` (the last context's) with what changed
    set in it when nothing left, so a join costs what it changed; else a copy.
    `records`: `nodes` by id and the only ids that may differ from `held`
    (then leaves are removed from `held` too, and nothing else is visited)."""
    if not isinstance(held, PersistentMap):
        return {n.id: n for n in nodes}
    if records is not None:
        by_id, ids = records
        lookup = held.lookup
        sets = [
            (i, n) for i in sorted(ids) if (n := by_id.get(i)) is not None and lookup(i) is not n
        ]
        gone = [i for i in ids if i not in by_id and i in held]
        return held.changed(sets, gone) if sets or gone else held
    lookup = held.lookup
    changed = [(n.id, n) for n in nodes if lookup(n.id) is not n]
    joined = sum(1 for node_id, _ in changed if node_id not in held)
    if len(held) + joined != len(nodes):  # some left
        return {n.id: n for n in nodes}
    return held.set_many(changed) if changed else held


def online_set(
    held: AbstractSet[int] | None, online: set[int], ids: AbstractSet[int] | None = None
) -> AbstractSet[int]:
    """`online` as a context holds it: `held` (the last context's, kept up to
    date change by change) itself when it says the same, else a frozen copy.
    `ids`: the only ids whose state may differ between the two (else all)."""
    if not isinstance(held, PersistentIds):
        return frozenset(online)
    for node_id in online.symmetric_difference(held) if ids is None else sorted(ids):
        held = held.with_id(node_id, node_id in online)
    return held
