"""The order in which node entries changed, for sessions to catch up from."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["ChangeLog"]


class ChangeLog:
    """Ids of nodes whose record or online state changed, in order. A session
    remembers `gen` when it catches up and reads what changed since; one that
    fell further behind than the log keeps is told to look at every peer."""

    KEEP = 1 << 15

    def __init__(self) -> None:
        self._ids: list[int] = []
        self._base = 0  # the generation of _ids[0]

    @property
    def gen(self) -> int:
        return self._base + len(self._ids)

    def record(self, ids: Iterable[int]) -> None:
        self._ids.extend(ids)
        if len(self._ids) > 2 * self.KEEP:
            drop = len(self._ids) - self.KEEP
            del self._ids[:drop]
            self._base += drop

    def since(self, gen: int) -> list[int] | None:
        if gen < self._base:
            return None
        return self._ids[gen - self._base :]
