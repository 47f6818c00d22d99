"""Less memory per h2 connection: the per-connection deques and dispatch
table of h2 and hpack swapped for smaller objects that do the same
operations (a streaming control connection lives for days, thousands at once).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import h2.connection

__all__ = ["compact"]


class _Values(list[int]):
    """h2 keeps each setting's pending values in a `collections.deque`, whose
    first block is 64 slots: two settings tables of them are ~8 KiB on every
    connection. A list does the same for the one or two values ever pending."""

    __slots__ = ()

    def popleft(self) -> int:
        return self.pop(0)


class _Entries(list[tuple[bytes, bytes]]):
    """hpack's dynamic table, as a list: `deque()` costs ~600 bytes even empty,
    and a control connection's table holds a handful of headers."""

    __slots__ = ()

    def appendleft(self, entry: tuple[bytes, bytes]) -> None:
        self.insert(0, entry)


def compact(conn: h2.connection.H2Connection) -> None:
    """Swap the per-connection deques of h2 and hpack for lists (same
    operations, a tenth of the memory) on a connection not yet started.

    This reaches into h2's and hpack's internals (pyproject bounds both to
    the major versions it was written against): where they are not the
    deques it knows, it leaves them as they are, costing memory, never
    correctness (tests/unit/test_edge_memory.py notices the memory)."""
    for settings in (conn.local_settings, conn.remote_settings):
        table = getattr(settings, "_settings", None)
        if not isinstance(table, dict):
            continue
        for code, values in table.items():
            if type(values) is deque:
                table[code] = _Values(values)
    for header_table in (conn.encoder.header_table, conn.decoder.header_table):
        entries = getattr(header_table, "dynamic_entries", None)
        if type(entries) is deque and entries.maxlen is None:
            header_table.dynamic_entries = _Entries(entries)  # type: ignore[assignment]
    dispatch = getattr(conn, "_frame_dispatch_table", None)
    if isinstance(dispatch, dict):
        names = _dispatch_names(dispatch)
        if names is not None:
            conn._frame_dispatch_table = _Dispatch(conn, names)  # type: ignore[assignment]


class _Dispatch:
    """h2's frame dispatch table (frame class -> handler), bound at each
    lookup: the dict h2 makes holds a dozen bound methods per connection
    (~1.4 KiB) for what is the same dozen names on every one."""

    __slots__ = ("_conn", "_names")

    def __init__(self, conn: object, names: Mapping[type, str]) -> None:
        self._conn, self._names = conn, names

    def __getitem__(self, kind: type) -> Callable[..., Any]:
        handler: Callable[..., Any] = getattr(self._conn, self._names[kind])
        return handler


_DISPATCH_NAMES: dict[type, str] = {}


def _dispatch_names(table: dict[Any, Any]) -> Mapping[type, str] | None:
    """The handler names of h2's table, learnt from the first connection and
    checked on each (None: not bound methods of the connection: leave it)."""
    names = {kind: getattr(handler, "__name__", "") for kind, handler in table.items()}
    if not all(
        isinstance(kind, type) and getattr(getattr(h, "__self__", None), n, None) == h
        for (kind, h), n in zip(table.items(), names.values(), strict=True)
    ):
        return None
    if not _DISPATCH_NAMES:
        _DISPATCH_NAMES.update(names)
    return _DISPATCH_NAMES if names == _DISPATCH_NAMES else None
