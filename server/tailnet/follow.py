"""An index over a context's node map that follows each replacement of the
map through the change log, instead of looking at every node again.

A runtime event (an endpoint change, a node online) replaces the node map
with one node set in it, and logs that node's id (`PeerEntries.log`). An
index made from the map it replaced then needs only the ids logged since.
A map the log does not explain (the log trimmed past where the index last
looked, or a size that does not add up) is indexed from scratch. One index
follows one lineage of maps: the serving snapshot's and a canary's share the
log but differ in who is in them, so each context lineage has its own
(`MapContext.expiries`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from server.store.model import Node
from server.tailnet.changelog import ChangeLog

__all__ = ["FollowedIndex", "MatchingIds"]


class FollowedIndex:
    """Subclasses say how a node is filed (`_file`) and how a whole map is
    (`_index_all`); `follow(nodes)` brings the index to `nodes`."""

    def __init__(self, log: ChangeLog) -> None:
        self.log = log  # which log it follows (an index made for another is no use)
        self._nodes: Mapping[int, Node] | None = None
        self._gen = 0
        self.rebuilds = 0  # full passes (tests count them)

    def follow(self, nodes: Mapping[int, Node]) -> None:
        if nodes is self._nodes:
            return
        ids = self._logged(nodes)
        if ids is None:
            self.rebuilds += 1
            self._index_all(nodes)
        else:
            get = nodes.get
            for node_id in ids:
                self._file(node_id, get(node_id))
        self._nodes, self._gen = nodes, self.log.gen

    def _logged(self, nodes: Mapping[int, Node]) -> list[int] | None:
        """The ids that may differ between the map last followed and `nodes`,
        or None when the log cannot say (or saying costs more than a pass)."""
        held = self._nodes
        changed = None if held is None else self.log.since(self._gen)
        if held is None or changed is None or len(changed) > len(nodes) // 4 + 8:
            return None
        ids = list(dict.fromkeys(changed))
        size = len(held)
        for node_id in ids:
            size += (node_id in nodes) - (node_id in held)
        return ids if size == len(nodes) else None

    def _index_all(self, nodes: Mapping[int, Node]) -> None:
        raise NotImplementedError

    def _file(self, node_id: int, node: Node | None) -> None:
        """File `node` under `node_id` (None: the id left the map)."""
        raise NotImplementedError


class MatchingIds(FollowedIndex):
    """Ids of the nodes that `matches`, in the map last asked about."""

    def __init__(self, log: ChangeLog, matches: Callable[[Node], object]) -> None:
        super().__init__(log)
        self._matches = matches
        self._ids: set[int] = set()

    def among(self, nodes: Mapping[int, Node]) -> list[int]:
        self.follow(nodes)
        return sorted(self._ids)

    def _index_all(self, nodes: Mapping[int, Node]) -> None:
        matches = self._matches
        self._ids = {i for i, n in nodes.items() if matches(n)}

    def _file(self, node_id: int, node: Node | None) -> None:
        if node is not None and self._matches(node):
            self._ids.add(node_id)
        else:
            self._ids.discard(node_id)
