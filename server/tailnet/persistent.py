"""A map and an id set that are never changed, only replaced, where the
replacement shares all but a path with the original (a HAMT: `immutables`,
the structure behind `contextvars`).

A `MapContext` is replaced whole whenever a node changes, and the one it
replaces stays valid for whoever still holds it. Copying its node map and
online set for that costs the whole tailnet per change: at 5,000 nodes a
reconnect storm spent more time copying than serving. With these, replacing
one node costs O(log n) and reads stay O(1).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from collections.abc import Set as AbstractSet
from typing import TypeVar

import immutables

__all__ = ["PersistentIds", "PersistentMap"]

K = TypeVar("K")
V = TypeVar("V")
S = TypeVar("S")


class PersistentMap(Mapping[K, V]):
    """An immutable mapping; `set` returns a new one sharing structure."""

    __slots__ = ("_map",)

    def __init__(self, items: Mapping[K, V] | None = None) -> None:
        self._map: immutables.Map[K, V] = immutables.Map(items or {})

    @classmethod
    def of(cls, mapping: Mapping[K, V]) -> PersistentMap[K, V]:
        """`mapping` itself when it is one already, else a copy (once)."""
        return mapping if isinstance(mapping, PersistentMap) else cls(mapping)

    def set(self, key: K, value: V) -> PersistentMap[K, V]:
        out: PersistentMap[K, V] = PersistentMap.__new__(PersistentMap)
        out._map = self._map.set(key, value)
        return out

    def set_many(self, items: Iterable[tuple[K, V]]) -> PersistentMap[K, V]:
        """This map with every (key, value) of `items` set: O(len(items) log n)."""
        with self._map.mutate() as changing:
            for key, value in items:
                changing[key] = value
            out: PersistentMap[K, V] = PersistentMap.__new__(PersistentMap)
            out._map = changing.finish()
        return out

    def changed(self, items: Iterable[tuple[K, V]], removed: Iterable[K]) -> PersistentMap[K, V]:
        """This map with every (key, value) of `items` set and the keys of
        `removed` (each present) deleted: O(changes × log n)."""
        with self._map.mutate() as changing:
            for key, value in items:
                changing[key] = value
            for key in removed:
                del changing[key]
            out: PersistentMap[K, V] = PersistentMap.__new__(PersistentMap)
            out._map = changing.finish()
        return out

    @property
    def lookup(self) -> Callable[[K], V | None]:
        """`get` without the wrapper (for loops over every node)."""
        return self._map.get

    def __getitem__(self, key: K) -> V:
        return self._map[key]

    def get(self, key: K, default: V | None = None) -> V | None:  # type: ignore[override]
        return self._map.get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self._map

    def __iter__(self) -> Iterator[K]:
        return iter(self._map)

    def __len__(self) -> int:
        return len(self._map)

    def __repr__(self) -> str:
        return f"PersistentMap({dict(self._map)!r})"


class PersistentIds(AbstractSet[int]):
    """An immutable set of ids; `with_id` returns a new one sharing structure.
    Set operations with other sets give frozensets."""

    __slots__ = ("_map",)

    def __init__(self, ids: Iterable[int] = ()) -> None:
        self._map: immutables.Map[int, None] = immutables.Map(dict.fromkeys(ids))

    @classmethod
    def of(cls, ids: AbstractSet[int]) -> PersistentIds:
        return ids if isinstance(ids, PersistentIds) else cls(ids)

    def with_id(self, node_id: int, present: bool) -> PersistentIds:
        """This set with `node_id` in it (`present`) or not."""
        if (node_id in self._map) == present:
            return self
        out = PersistentIds.__new__(PersistentIds)
        out._map = self._map.set(node_id, None) if present else self._map.delete(node_id)
        return out

    @classmethod
    def _from_iterable(cls, it: Iterable[S]) -> frozenset[S]:
        return frozenset(it)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._map

    def __iter__(self) -> Iterator[int]:
        return iter(self._map)

    def __len__(self) -> int:
        return len(self._map)

    def __repr__(self) -> str:
        return f"PersistentIds({sorted(self._map)!r})"
