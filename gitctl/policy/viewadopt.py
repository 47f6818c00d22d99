"""How a view index takes over an earlier index's work: its peer views lent
to equal new ones, and the views of the nodes a change cannot touch (which
nodes those are: `viewreuse`). `ViewIndex.compare`, `adopt` and `lend` run
these.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import compress, repeat
from operator import is_not
from typing import TYPE_CHECKING, cast

from .joinviews import JoinChange
from .output import NodeKey, PeerView
from .refilter import refilter_from
from .viewreuse import affected, peer_change, same_visibility

if TYPE_CHECKING:
    from .viewindex import ViewIndex


def lend(index: ViewIndex[NodeKey], other: ViewIndex[NodeKey]) -> None:
    """Let ``other``'s peer views stand in for equal ones ``index`` builds, so
    an unchanged peer stays the same object across recompiles (map
    refreshes compare peers by identity). Only the views are held."""
    at, lend, keys, plain = index.position, index._lend, other.keys, other._plain
    # What `other` itself borrowed covers the views it took over unbuilt.
    if index.keys[: len(keys)] == keys:  # it has no node ``index`` lacks
        lend.update(other._lend)
    else:
        lend.update((k, pv) for k, pv in other._lend.items() if k in at)
    # (in C: a join must not cost a Python step per node; and where no
    # peer view was built, as under a policy that gives no node peers, no step)
    if plain.count(None) < len(plain):
        built = compress(zip(keys, plain, strict=True), map(is_not, plain, repeat(None)))
        lend.update(cast("Iterator[tuple[NodeKey, PeerView]]", built))


def compare(index: ViewIndex[NodeKey], previous: ViewIndex[NodeKey]) -> None:
    """Work out which views the change from ``previous`` (nodes joining or
    leaving, or a new policy over the same nodes) may touch, for `adopt`.

    It reads ``previous``'s rules and who-sees-whom, never iterates its
    view caches: it may run in a worker thread while ``previous`` serves."""
    keys = affected(previous, index)
    change = peer_change(previous, index, keys) if keys is not None else None
    # Who sees whom carries over whole when no rule's reach changed.
    same = keys is not None and change is None and same_visibility(previous, index)
    index._compared = (previous, keys, change, same)


def adopt(index: ViewIndex[NodeKey], previous: ViewIndex[NodeKey]) -> frozenset[NodeKey] | None:
    """Take over ``previous``'s views of the nodes that the change between
    it and ``index`` cannot have touched (see `compare`).

    Returns the keys whose views may differ (None: possibly all).
    """
    if index._compared is None or index._compared[0] is not previous:
        index.compare(previous)
    assert index._compared is not None
    _, keys, change, same = index._compared
    index._compared = None  # holds the previous index
    index.lend(previous)
    old_keys = previous.keys
    if keys is None:
        return None
    index.peer_change = change
    patch = change.viewers if change is not None else frozenset()
    at = index.position
    had = len(old_keys)
    if index.keys[:had] == old_keys:  # a join (or nothing): every old node keeps its place
        _take_over(index, previous, keys, patch, same)
        return keys
    for i, v in list(previous.views.items()):
        key = old_keys[i]
        if key not in keys:
            index.views[at[key]] = v
        elif key in patch:
            index._bases[at[key]] = v
        elif key in at:
            index._earlier[at[key]] = v.peers
    if old_keys == index.keys:  # same positions: who-sees-whom carries over
        for i, mask in list(previous._visible.items()):
            if same or index.keys[i] not in keys:
                index._visible.setdefault(i, mask)
    return keys


def _take_over(
    index: ViewIndex[NodeKey],
    previous: ViewIndex[NodeKey],
    keys: frozenset[NodeKey],
    patch: frozenset[NodeKey],
    same_visibility: bool = False,
) -> None:
    """`adopt` when ``previous``'s nodes keep their positions here: its
    views and who-sees-whom are copied whole (in C), and only the ``keys``
    whose views may differ are taken out again (their who-sees-whom too,
    unless ``same_visibility``), so the work is what the change touched,
    not the tailnet."""
    at, old_views = index.position, previous.views
    refilter = refilter_from(previous, index, same_visibility)
    taken = dict(old_views)
    # A node the change cannot touch sees what it saw (a newcomer, last,
    # is not among its peers), so its who-sees-whom carries over too.
    visible = dict(previous._visible)
    join = index.peer_change if isinstance(index.peer_change, JoinChange) else None
    for key in keys:
        i = at.get(key)
        if i is None:
            continue
        if not same_visibility:
            seen = visible.pop(i, None)
            if join is not None and seen is not None and i in join.seen:
                visible[i] = seen | join.seen[i]  # and the newcomers it sees
        v = taken.pop(i, None)
        if v is None:
            continue
        if key in patch:
            index._bases[i] = v
        elif refilter is not None and refilter.keeps_all_but_filter(i):
            index._refilter[i] = v
        else:
            index._earlier[i] = v.peers
    if refilter is not None:
        index._whois_kept = refilter.whois_kept
    for i, v in index.views.items():  # built here already (none, as a rule)
        taken.setdefault(i, v)
    index.views = taken
    visible.update(index._visible)
    index._visible = visible
    if same_visibility and previous.no_v4 == index.no_v4 and previous._routers == index._routers:
        # The same nodes with the same addresses: a peer without routes
        # looks as it did, and so do groups' entries (kept, not rebuilt
        # per group and compared again).
        index._plain = previous._plain.copy()
        index._group_full = {**previous._group_full, **index._group_full}
        index._same_groups = True
