"""The h2 server connection a control connection runs on, as made: its
configuration, our settings in its preface, and less memory: the
per-connection deques and dispatch table of h2 and hpack swapped for
smaller objects that do the same operations (a streaming control connection
lives for days, thousands at once).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import h2.config
import h2.connection
import h2.settings

__all__ = ["compact", "server_connection"]

# One for every connection (h2 only reads it). What we send is validated by
# construction (fixed, lowercase names; values we make): h2's outbound checks
# and normalisation were a tenth of a registration's HTTP/2 cost. What the
# client sends is still checked.
_CONFIG = h2.config.H2Configuration(
    client_side=False,
    header_encoding="utf-8",
    validate_outbound_headers=False,
    normalize_outbound_headers=False,
)


def server_connection(inbound_window: int) -> h2.connection.H2Connection:
    """A server connection, not yet started, whose preface gives the client
    `inbound_window` per stream (the connection's own window is the caller's
    to raise once started)."""
    conn = h2.connection.H2Connection(config=_CONFIG)
    # Our settings go in the connection preface itself. Sent first with
    # update_settings, they would be undone on the client by the preface
    # (built from the settings in force: the defaults), leaving it a
    # 64 KiB stream window that h2 refills only after half of ours.
    conn.local_settings = h2.settings.Settings(
        client=False,
        initial_values={
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: inbound_window,
            h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL: 0,
        },
    )
    compact(conn)
    return conn


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
