"""The PostgreSQL backend of the store, for tailnetd replicas sharing one database.

The same SQL as sqlite (`_sqlstore`), run through a psycopg connection pool
(connections in autocommit; a write is one explicit transaction).

Who may write what at the same time, and why row locks:

- Writers of addresses and names (register, delete, rename, the ephemeral
  sweep) first lock the one row of `node_index_clock` and bump its version.
  That lock does for them what sqlite's `BEGIN IMMEDIATE` does: a second
  writer, in this process or another, waits until the first commits, and
  then (READ COMMITTED: a fresh snapshot per statement) sees what it wrote.
  The version says whether this process's in-memory `NodeIndex` is current:
  it is when it equals the version before our bump. SERIALIZABLE would not
  do: the free address comes from the in-memory index, not from a query, so
  its conflict detection would not see the read it must protect, and every
  clash would become a retry. An advisory lock would serialize as well, but
  the version counter is needed anyway; one row does both.
- A pre-auth key is read `FOR UPDATE` in the transaction that writes the
  node, so a second registration with the same single-use key waits, then
  finds it used.
- Other writes (endpoints, last seen, key rotation) lock only their own row;
  a UNIQUE clash with another process's write surfaces as `Conflict`.

Change notification between replicas: the node registry's changes are sent
with `notify` right after each write commits (`server.tailnet.replicas`,
`server.tailnet.pg_listen`). A replica that dies between a commit and its
NOTIFY also drops its heartbeat; the others then re-read the store.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from ipaddress import IPv4Network, IPv6Network
from typing import Any

import psycopg
import psycopg.errors
from psycopg_pool import ConnectionPool, PoolTimeout

from server.store._db import Db
from server.store._open import redact_url
from server.store._sqlstore import SqlStore
from server.store.ipalloc import DEFAULT_IPV4_PREFIX, DEFAULT_IPV6_PREFIX
from server.store.model import AllocationStrategy, Conflict, Rng, StoreError
from server.store.postgres._migrate import apply_postgres_migrations

__all__ = ["PostgresStore", "open_postgres"]

# One server thread uses the store; a few more connections let an admin call
# or a slow commit overlap without waiting for the pool.
_POOL_MAX = 4
_CONNECT_TIMEOUT = 10.0  # seconds to reach the database when opening
# Seconds a call waits for a connection before PoolTimeout: as long as sqlite's
# busy_timeout, so an unreachable database stalls the server no longer than a
# locked file does.
_CALL_TIMEOUT = 5.0
_CLASH = {
    "machine_key": "machine key",
    "node_key": "node key",
    "given_name": "name",
    "ipv4": "IPv4 address",
    "ipv6": "IPv6 address",
    "prefix": "key prefix",
    "auth_id": "login id",
}


def open_postgres(
    url: str,
    *,
    ipv4_prefix: IPv4Network | None = DEFAULT_IPV4_PREFIX,
    ipv6_prefix: IPv6Network | None = DEFAULT_IPV6_PREFIX,
    allocation: AllocationStrategy = "sequential",
    rng: Rng = os.urandom,
) -> PostgresStore:
    """Connect to the database at `url` and migrate it."""
    pool = ConnectionPool(
        url, min_size=1, max_size=_POOL_MAX, kwargs={"autocommit": True},
        timeout=_CALL_TIMEOUT, open=True, name="tailnetd-store",
    )  # fmt: skip
    try:
        pool.wait(timeout=_CONNECT_TIMEOUT)
        with pool.connection() as conn:
            apply_postgres_migrations(conn)
    except PoolTimeout:
        pool.close()
        raise StoreError(f"cannot connect to the database {redact_url(url)}") from None
    except BaseException:
        pool.close()
        raise
    return PostgresStore(pool, ipv4_prefix, ipv6_prefix, allocation, rng)


class PostgresStore(SqlStore):
    _FOR_UPDATE = " FOR UPDATE"

    def __init__(
        self,
        pool: ConnectionPool[psycopg.Connection[Any]],
        ipv4_prefix: IPv4Network | None,
        ipv6_prefix: IPv6Network | None,
        allocation: AllocationStrategy,
        rng: Rng,
    ) -> None:
        self._pool = pool
        self._clock: int | None = None  # node_index_clock.version in this transaction
        super().__init__(ipv4_prefix, ipv6_prefix, allocation, rng)

    def close(self) -> None:
        self._pool.close()

    @property
    def url(self) -> str:
        """Where the database is (for a LISTEN connection of its own)."""
        return str(self._pool.conninfo)

    def notify(self, channel: str, payload: str) -> None:
        """`NOTIFY channel, payload`: other replicas' LISTEN connections get it."""
        with self._pool.connection() as conn:
            conn.execute("SELECT pg_notify(%s, %s)", (channel, payload))

    @contextmanager
    def _write(self, *, index: bool = False, one_statement: bool = False) -> Iterator[Db]:
        # `one_statement` changes nothing here: the pool's connection needs its transaction.
        clock = None
        try:
            with self._pool.connection() as conn, conn.transaction():
                db: Db = _PgDb(conn)
                if index:
                    # The seam for change notification between replicas: a
                    # NOTIFY sent here reaches listeners when this commits.
                    clock = self._clock = int(
                        db.execute(
                            "UPDATE node_index_clock SET version = version + 1 RETURNING version"
                        ).fetchone()[0]
                    )
                yield db
        except psycopg.errors.UniqueViolation as exc:
            self._index = None
            raise Conflict(_clash_message(exc)) from None
        except BaseException as exc:
            # As in sqlite: the store's own refusals come before the index
            # changes; anything else may have left it ahead of the database.
            if not isinstance(exc, StoreError):
                self._index = None
            raise
        finally:
            self._clock = None
        if clock is not None and self._index is not None:
            # Current before this write (or read in it): now current after it.
            if self._index.version == clock - 1:
                self._index.version = clock
            else:
                self._index = None
        self._generation += 1

    @contextmanager
    def _read(self) -> Iterator[Db]:
        with self._pool.connection() as conn:
            yield _PgDb(conn)

    def _index_version(self, db: Db) -> int:
        if self._clock is None:
            raise RuntimeError("the node index is used outside _write(index=True)")
        return self._clock - 1


class _PgDb:
    """A psycopg connection speaking the `?` placeholders of the shared SQL."""

    __slots__ = ("_conn",)

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Sequence[Any] = (), /) -> psycopg.Cursor[Any]:
        return self._conn.execute(_placeholders(sql), params)


@lru_cache(maxsize=512)
def _placeholders(sql: str) -> str:
    # The shared SQL has no '?' or '%' anywhere but as placeholders.
    if "%" in sql:
        raise ValueError("'%' in shared SQL would be read as a psycopg placeholder")
    return sql.replace("?", "%s")


def _clash_message(exc: psycopg.errors.UniqueViolation) -> str:
    constraint = exc.diag.constraint_name or ""
    what = next((w for column, w in _CLASH.items() if column in constraint), "value")
    return f"another server wrote the same {what} at the same moment; try again"
