"""The order in which node entries changed, for sessions to catch up from."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from itertools import chain, repeat
from typing import Any

from gitctl.policy.viewmaps import GroupPeers

__all__ = ["ChangeLog"]


class ChangeLog:
    """Ids of nodes whose record or online state changed, in order. A session
    remembers `gen` when it catches up and reads what changed since; one that
    fell further behind than the log keeps is told to look at every peer.

    A session nobody woke for long (under a sparse policy, most of them) is
    behind by every registration since its own: reading that whole slice at
    the next commit cost each session O(tailnet), the commit O(n^2) (3.9 s of
    CPU at 5,000 nodes). `since_among` looks up its peers instead when they
    are fewer, by the generation each id was last recorded at.

    Under `autogroup:self` or a mesh the peers are a `GroupPeers`, whose
    group is one collection shared by every view of the group: the newest
    generation among a group's ids is worked out once per group while the
    log stands still (a commit's wave), and a session whose group has not
    changed since its `gen` (after a registration storm, nearly all) is
    answered without a lookup per peer. The groups are held until the next
    change is recorded (at most `GROUPS_HELD`)."""

    KEEP = 1 << 15
    GROUPS_HELD = 1 << 14

    def __init__(self) -> None:
        self._ids: list[int] = []
        self._base = 0  # the generation of _ids[0]
        self._last: dict[int, int] = {}  # id -> the generation it was last recorded at
        # id(group) -> (the group, the newest generation of its ids), while nothing is recorded
        self._newest: dict[int, tuple[Any, int]] = {}

    @property
    def gen(self) -> int:
        return self._base + len(self._ids)

    def record(self, ids: Iterable[int]) -> None:
        start = len(self._ids)
        self._ids.extend(ids)
        if len(self._ids) > start:
            self._newest.clear()
        last = self._last
        for at, node_id in enumerate(self._ids[start:], self._base + start):
            last[node_id] = at
        if len(self._ids) > 2 * self.KEEP:
            drop = len(self._ids) - self.KEEP
            del self._ids[:drop]
            self._base += drop
            self._last = {i: at for i, at in last.items() if at >= self._base}

    def since(self, gen: int) -> list[int] | None:
        if gen < self._base:
            return None
        return self._ids[gen - self._base :]

    def since_among(
        self, gen: int, peers: Collection[int], held: Collection[int]
    ) -> list[int] | None:
        """What changed since `gen` (as `since`), or only those of it among
        `peers` and `held` (the only ids a session looks at), whichever is
        cheaper to find."""
        if gen < self._base:
            return None
        start = gen - self._base
        if len(self._ids) - start <= len(peers) + len(held):
            return self._ids[start:]
        if self._older(peers, gen) and (held is peers or self._older(held, gen)):
            return []
        last = self._last
        # A commit that changes no peer hands the session the peers it holds.
        ids = peers if peers is held else chain(peers, held)
        return [i for i in ids if last.get(i, -1) >= gen]

    def _older(self, peers: Collection[int], gen: int) -> bool:
        """Whether every id of `peers`' group was last recorded before `gen`
        (False: not known without looking at each)."""
        if type(peers) is not GroupPeers:
            return False
        group = peers.group  # the viewer too: a change of its own only costs the lookups
        newest = self._newest.get(id(group))
        if newest is None or newest[0] is not group:
            if len(self._newest) >= self.GROUPS_HELD:
                self._newest.clear()
            newest = (group, max(map(self._last.get, group, repeat(-1)), default=-1))
            self._newest[id(group)] = newest
        return bool(newest[1] < gen)
