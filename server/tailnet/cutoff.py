"""Registered nodes the serving maps leave out (their user is not in git),
kept change by change for the sweep that asks every few seconds.

Looking at every record again after any record write made every endpoint
change cost a pass over the tailnet at the next sweep (every 5 s: 26 ms at
5,000 nodes under the profiler, charged to whatever event's window it fell
in). A node is cut off when it has a record, is approved and is not in the
served node map; so only the ids whose records were written since, and the
ids the change log says the map changed in (follow.py), can move in or out.
"""

from __future__ import annotations

from collections.abc import Mapping

from server.store.model import Node
from server.tailnet.changelog import ChangeLog
from server.tailnet.follow import FollowedIndex

__all__ = ["CutOff"]


class _Unserved(FollowedIndex):
    """The records missing from the node map last followed (`follow.py`)."""

    def __init__(self, log: ChangeLog, records: Mapping[int, Node]) -> None:
        super().__init__(log)
        self._records = records
        self.cut: dict[int, Node] = {}

    def _index_all(self, nodes: Mapping[int, Node]) -> None:
        self.cut = {i: n for i, n in self._records.items() if i not in nodes and n.approved}

    def refile(self, node_id: int, node: Node | None) -> None:
        """`node_id`'s record was written; `node`: its entry in the map followed."""
        self._file(node_id, node)

    def _file(self, node_id: int, node: Node | None) -> None:
        record = self._records.get(node_id)
        if node is None and record is not None and record.approved:
            self.cut[node_id] = record
        else:
            self.cut.pop(node_id, None)


class CutOff:
    """Approved records (`records`, the hub's own, read as it changes) that a
    served node map leaves out. `wrote` is told of every record write."""

    def __init__(self, records: Mapping[int, Node]) -> None:
        self._records = records
        self._written: set[int] = set()
        self._index: _Unserved | None = None

    @property
    def rebuilds(self) -> int:
        """Passes over every record (tests count them)."""
        return 0 if self._index is None else self._index.rebuilds

    def wrote(self, node_id: int) -> None:
        self._written.add(node_id)

    def of(self, served: Mapping[int, Node], log: ChangeLog) -> list[Node]:
        """The cut-off nodes against `served` (a context's nodes, whose
        replacements `log` records), by id."""
        index = self._index
        if index is None or index.log is not log:
            rebuilds = self.rebuilds
            index = self._index = _Unserved(log, self._records)
            index.rebuilds = rebuilds
        index.follow(served)
        written, self._written = self._written, set()
        for node_id in written:
            index.refile(node_id, served.get(node_id))
        return [index.cut[i] for i in sorted(index.cut)]
