"""Which nodes' keys expire in a span of time, kept up to date change by change.

A session that wakes after time passed re-sends the peers whose keys expired
meanwhile (`PeerEntries.expiring`). Sorting every node's expiry whenever the
node map was replaced made every runtime event cost the tailnet: an endpoint
change replaces the map (one node set in it), and the first session it woke
sorted all 5,000 expiries again (2.3 ms at 2,000 nodes, 6.6 ms at 5,000).
This index follows the replacements through the change log (follow.py).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from collections.abc import Mapping
from datetime import datetime

from server.store.model import Node
from server.tailnet.changelog import ChangeLog
from server.tailnet.follow import FollowedIndex

__all__ = ["Expiries"]

_LAST = 1 << 62  # sorts after every id


class Expiries(FollowedIndex):
    """(expiry, id) of the nodes of the map last asked about, sorted."""

    def __init__(self, log: ChangeLog) -> None:
        super().__init__(log)
        self._of: dict[int, datetime] = {}  # id -> the expiry it is filed under
        self._sorted: list[tuple[datetime, int]] = []

    def between(self, nodes: Mapping[int, Node], since: datetime, now: datetime) -> list[int]:
        """Ids of `nodes` whose key expires in (since, now]: their entries
        built at `since` no longer say the same about expiry."""
        if now <= since:
            return []
        self.follow(nodes)
        lo = bisect_right(self._sorted, (since, _LAST))
        hi = bisect_right(self._sorted, (now, _LAST))
        return [i for _, i in self._sorted[lo:hi]]

    def _index_all(self, nodes: Mapping[int, Node]) -> None:
        self._of = {i: n.key_expiry for i, n in nodes.items() if n.key_expiry is not None}
        self._sorted = sorted((e, i) for i, e in self._of.items())

    def _file(self, node_id: int, node: Node | None) -> None:
        expiry = None if node is None else node.key_expiry
        filed = self._of.get(node_id)
        if filed == expiry:
            return
        if filed is not None:
            del self._sorted[bisect_left(self._sorted, (filed, node_id))]
            del self._of[node_id]
        if expiry is not None:
            insort(self._sorted, (expiry, node_id))
            self._of[node_id] = expiry
