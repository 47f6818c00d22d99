"""Choosing the backend: a `postgresql://` URL or a path to a sqlite file."""

from __future__ import annotations

import os
import sqlite3
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from server.datadir import make_private
from server.store._sqlstore import SqlStore
from server.store.ipalloc import DEFAULT_IPV4_PREFIX, DEFAULT_IPV6_PREFIX
from server.store.model import AllocationStrategy, Rng, StoreError
from server.store.sqlite import open_sqlite

__all__ = ["is_postgres_url", "open_node_store", "open_store", "redact_url"]

_POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_postgres_url(where: str | Path) -> bool:
    return isinstance(where, str) and where.startswith(_POSTGRES_SCHEMES)


def open_store(
    where: str | Path,
    *,
    ipv4_prefix: IPv4Network | None = DEFAULT_IPV4_PREFIX,
    ipv6_prefix: IPv6Network | None = DEFAULT_IPV6_PREFIX,
    allocation: AllocationStrategy = "sequential",
    rng: Rng = os.urandom,
) -> SqlStore:
    """Open and migrate the database at `where`.

    A `postgresql://` (or `postgres://`) URL opens the PostgreSQL backend;
    anything else is the path of a sqlite file, created with its directory if
    missing. `rng` only drives random address allocation.
    """
    if is_postgres_url(where):
        from server.store.postgres import open_postgres  # psycopg only when asked for

        return open_postgres(
            str(where), ipv4_prefix=ipv4_prefix, ipv6_prefix=ipv6_prefix,
            allocation=allocation, rng=rng,
        )  # fmt: skip
    return open_sqlite(
        Path(where), ipv4_prefix=ipv4_prefix, ipv6_prefix=ipv6_prefix,
        allocation=allocation, rng=rng,
    )  # fmt: skip


def open_node_store(where: str | Path, description: str) -> SqlStore:
    """The server's node state: a sqlite file whose files (db, -wal, -shm) only
    the owner reads, or PostgreSQL. StoreError says which database, for people."""
    if isinstance(where, Path):
        return _open_private(where)
    try:
        return open_store(where)
    except StoreError as exc:
        raise StoreError(f"node state in {description}: {exc}") from None


def _open_private(path: Path) -> SqlStore:
    """sqlite gives the -wal and -shm files the database file's mode, so the
    database is created 0600 before sqlite opens it."""
    siblings = [path.with_name(path.name + suffix) for suffix in ("-wal", "-shm")]
    try:
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        make_private(path, *siblings)
        store = open_store(path)
    except (OSError, sqlite3.Error) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else str(exc)
        raise StoreError(f"cannot open the state database {path}: {reason}") from None
    make_private(*siblings)
    return store


def redact_url(url: str) -> str:
    """The database URL fit for a log line: any password replaced by '***'."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        userinfo, _, hostinfo = netloc.rpartition("@")
        netloc = f"{userinfo.partition(':')[0]}:***@{hostinfo}"
    query = "&".join(
        f"{key}=***" if key == "password" else f"{key}={value}"
        for key, value in parse_qsl(parts.query, keep_blank_values=True)
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
