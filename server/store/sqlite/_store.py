"""The sqlite backend of the store: one file, one connection.

Writes run in `BEGIN IMMEDIATE` transactions, which take sqlite's write lock
up front: checks such as "is this address free" and the insert that relies
on them can never interleave with another writer, even a second process (an
admin command) on the same file. The in-memory node index is trusted while
`PRAGMA data_version` is unchanged (see `_nodeindex`).
`data_version` moves whenever another connection (an admin command, a second
process) commits to the file.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path

from server.store._db import Db
from server.store._sqlstore import SqlStore
from server.store.ipalloc import DEFAULT_IPV4_PREFIX, DEFAULT_IPV6_PREFIX
from server.store.model import AllocationStrategy, Rng, StoreError
from server.store.sqlite._migrate import apply_migrations

__all__ = ["SqliteStore", "data_version", "open_sqlite"]


def data_version(db: Db) -> int:
    """sqlite's own change counter for the file."""
    return int(db.execute("PRAGMA data_version").fetchone()[0])


def open_sqlite(
    path: Path,
    *,
    ipv4_prefix: IPv4Network | None = DEFAULT_IPV4_PREFIX,
    ipv6_prefix: IPv6Network | None = DEFAULT_IPV6_PREFIX,
    allocation: AllocationStrategy = "sequential",
    rng: Rng = os.urandom,
) -> SqliteStore:
    """Open (creating file and directory if missing) and migrate the database.

    `rng` only drives random address allocation.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), isolation_level=None)
    try:
        conn.execute("PRAGMA busy_timeout = 5000")
        conn.execute("PRAGMA journal_mode = WAL")
        # NORMAL in WAL mode survives a crash of the process intact; only a power
        # loss can drop the last commits, never corrupt the file.
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
        apply_migrations(conn)
    except BaseException:
        conn.close()
        raise
    return SqliteStore(conn, ipv4_prefix, ipv6_prefix, allocation, rng)


class SqliteStore(SqlStore):
    def __init__(
        self,
        conn: sqlite3.Connection,
        ipv4_prefix: IPv4Network | None,
        ipv6_prefix: IPv6Network | None,
        allocation: AllocationStrategy,
        rng: Rng,
    ) -> None:
        self._conn = conn
        super().__init__(ipv4_prefix, ipv6_prefix, allocation, rng)

    def close(self) -> None:
        self._conn.close()

    @contextmanager
    def _write(self, *, index: bool = False, one_statement: bool = False) -> Iterator[Db]:
        if one_statement:
            # In autocommit mode one statement is its own transaction.
            try:
                yield self._conn
            except BaseException as exc:
                if not isinstance(exc, StoreError):
                    self._index = None
                raise
            self._generation += 1
            return
        # BEGIN IMMEDIATE excludes every other writer, so `index` needs nothing more.
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
            self._conn.execute("COMMIT")
        except BaseException as exc:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            # Anything but the store's own refusals (a failed COMMIT included)
            # may have left the index ahead of the file.
            if not isinstance(exc, StoreError):
                self._index = None
            raise
        self._generation += 1

    @contextmanager
    def _read(self) -> Iterator[Db]:
        yield self._conn

    def _index_version(self, db: Db) -> int:
        # Moves when another connection commits to the file, not for our own commits.
        return data_version(db)
