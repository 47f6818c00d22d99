"""The read-only mappings a view index hands out: a view's peers (shared
by the views of a group of nodes that see each other), the node key -> view
mapping a compile returns, and a mapping computed on first read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from functools import partial
from operator import eq, is_, ne
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from .output import NodeKey, NodeView, PeerView

if TYPE_CHECKING:
    from .viewindex import ViewIndex


# The peers of every view that has none (read-only: views are shared).
NO_PEERS: Mapping[Any, PeerView] = MappingProxyType({})


class GroupPeers(Mapping[Any, PeerView]):
    """A view's peers: its group's entries (``group``, one dict shared by the
    group's views, read-only) less the viewer itself (``viewer``). In a
    1,000-node mesh a dict per view was 999 entries copied a thousand times,
    ~35 KB a streaming node; this is two references."""

    __slots__ = ("_len", "group", "viewer")

    def __init__(self, group: dict[Any, PeerView], viewer: Any) -> None:
        self.group = group
        self.viewer = viewer
        # (read-only, so counted once: a session asks at every commit)
        self._len = len(group) - (viewer in group)

    def __getitem__(self, key: Any) -> PeerView:
        if key == self.viewer:
            raise KeyError(key)
        return self.group[key]

    def get(self, key: Any, default: Any = None) -> Any:
        return default if key == self.viewer else self.group.get(key, default)

    def __contains__(self, key: object) -> bool:
        return key != self.viewer and key in self.group

    def __iter__(self) -> Iterator[Any]:
        return filter(partial(ne, self.viewer), self.group)  # in C: sessions iterate it

    def __len__(self) -> int:
        return self._len

    def __repr__(self) -> str:
        return f"GroupPeers({dict(self.items())!r})"


def same_items(a: Mapping[Any, PeerView], b: Mapping[Any, PeerView]) -> bool:
    """The same keys in the same order, with the same PeerView objects (in C)."""
    return len(a) == len(b) and all(map(is_, a.values(), b.values())) and all(map(eq, a, b))


class LazyNodes(Mapping[NodeKey, NodeView[NodeKey]]):
    """Node key -> view, each built on first access."""

    def __init__(self, index: ViewIndex[NodeKey]) -> None:
        self._index = index

    def __getitem__(self, key: NodeKey) -> NodeView[NodeKey]:
        return self._index.view(self._index.position[key])

    def __iter__(self) -> Iterator[NodeKey]:
        return iter(self._index.position)

    def __len__(self) -> int:
        return len(self._index.position)

    def __contains__(self, key: object) -> bool:
        return key in self._index.position

    def get(self, key: NodeKey, default: Any = None) -> Any:
        # (one lookup, not Mapping's `in` then `[]`: two per session a commit)
        i = self._index.position.get(key)
        return default if i is None else self._index.view(i)


class LazyMap(Mapping[str, Any]):
    """A mapping computed by ``build`` on first read."""

    def __init__(self, build: Callable[[], dict[str, Any]]) -> None:
        self._build: Callable[[], dict[str, Any]] | None = build
        self._data: dict[str, Any] = {}

    def _get(self) -> dict[str, Any]:
        if self._build is not None:
            self._data, self._build = self._build(), None
        return self._data

    def __getitem__(self, key: str) -> Any:
        return self._get()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._get())

    def __len__(self) -> int:
        return len(self._get())

    def __repr__(self) -> str:
        return repr(self._get())
