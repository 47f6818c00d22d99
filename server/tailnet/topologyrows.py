"""Each live node as the policy compiler sees it, converted once per change
of the node and listed per compile at the cost of what changed since the
last list: a settle of k joins at n nodes looks up k rows, not n (issue 11)."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable

from gitctl.policy import TopologyNode
from server.store.model import Node

__all__ = ["TopologyRows"]

Convert = Callable[..., TopologyNode]


class TopologyRows:
    """The compiler's view of each registered node (`convert` makes it), made
    once per change of the node (its record, approved routes or reachability),
    not per compile: a recompile after a join converts the newcomer alone."""

    def __init__(self, convert: Convert) -> None:
        self._convert = convert
        self._held: dict[int, tuple[Node, tuple[str, ...], bool, TopologyNode]] = {}
        self._made: dict[int, TopologyNode] = {}  # node id -> its last conversion
        # What the last `of` listed, and the ids converted again or forgotten
        # since (only their rows may differ from that list's).
        self._listed: tuple[list[int], list[TopologyNode]] = ([], [])
        self._since: set[int] = set()
        self._at: dict[int, int] | None = None  # id -> row in `_listed`, once asked

    def __call__(self, node: Node, approved: tuple[str, ...], online: bool) -> TopologyNode:
        held = self._held.get(node.id)
        if held is not None and held[0] is node and held[1] == approved and held[2] is online:
            return held[3]
        out = self._convert(node, approved, online=online)
        if held is None or held[3] != out:
            self._made[node.id] = out
            self._since.add(node.id)
        else:  # the same row: the record changed in what the compiler does not read
            out = held[3]
        self._held[node.id] = (node, approved, online, out)
        return out

    def of(self, node_ids: Iterable[int]) -> list[TopologyNode]:
        """The last conversion of each of `node_ids` (each converted before,
        since its record last changed). When the last list's ids lead
        `node_ids` (nodes joined after them), it is copied and only the rows
        converted since are looked up; else every row is (in C)."""
        ids = list(node_ids)
        since, self._since = self._since, set()
        last_ids, last_rows = self._listed
        n, made = len(last_ids), self._made
        if not n or len(since) > len(ids) // 8 or ids[:n] != last_ids:
            rows = list(map(made.__getitem__, ids))
            self._listed, self._at = (ids, rows), None
            return rows
        rows = [*last_rows, *map(made.__getitem__, ids[n:])]
        joined = set(ids[n:])
        for node_id in since - joined:
            if self._at is None:
                self._at = dict(zip(last_ids, range(n), strict=True))
            at = self._at.get(node_id)
            if at is not None:
                rows[at] = made[node_id]
        if self._at is not None:
            self._at.update(zip(ids[n:], range(n, len(ids)), strict=True))
        self._listed = (ids, rows)
        return rows

    @property
    def listed(self) -> list[int]:
        """The ids the last `of` listed, in its order."""
        return self._listed[0]

    def keep(self, node_ids: Collection[int]) -> None:
        """Forget the nodes not in `node_ids` (they left)."""
        if len(self._held) > len(node_ids):
            ids = set(node_ids)
            for gone in [i for i in self._held if i not in ids]:
                del self._held[gone]
                del self._made[gone]
                self._since.add(gone)
