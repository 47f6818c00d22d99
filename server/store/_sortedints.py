"""A sorted set of integers that finds its first gap by bisection.

Address allocation and "name-N" suffixes both ask "the lowest number in
[lo, hi] not taken"; a sorted list answers that in O(log n) comparisons
because, in a run with no gap, the k-th member after lo is exactly lo + k.
Adding and removing shift the list (a memmove: microseconds at 10,000 nodes).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator, Set

__all__ = ["SortedInts"]


class SortedInts(Set[int]):
    __slots__ = ("_items",)

    def __init__(self, values: Iterable[int] = ()) -> None:
        self._items = sorted(set(values))

    def __contains__(self, value: object) -> bool:
        if not isinstance(value, int):
            return False
        i = bisect_left(self._items, value)
        return i < len(self._items) and self._items[i] == value

    def __iter__(self) -> Iterator[int]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def add(self, value: int) -> None:
        i = bisect_left(self._items, value)
        if i == len(self._items) or self._items[i] != value:
            self._items.insert(i, value)

    def discard(self, value: int) -> None:
        i = bisect_left(self._items, value)
        if i < len(self._items) and self._items[i] == value:
            del self._items[i]

    def first_free(self, lo: int, hi: int) -> int | None:
        """The lowest integer in [lo, hi] not in the set; None if all are."""
        if lo > hi:
            return None
        items = self._items
        start, stop = bisect_left(items, lo), bisect_right(items, hi)
        if stop - start == hi - lo + 1:
            return None
        # items[start + k] >= lo + k always; find the first k where it is greater
        # (or the members in range run out).
        low, high = 0, stop - start
        while low < high:
            mid = (low + high) // 2
            if items[start + mid] == lo + mid:
                low = mid + 1
            else:
                high = mid
        return lo + low
