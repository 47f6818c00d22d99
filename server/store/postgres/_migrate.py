"""Applying the PostgreSQL list of migrations
(`server.store.migrations.POSTGRES_MIGRATIONS`)."""

from __future__ import annotations

from typing import Any

import psycopg

from server.store.migrations import (
    POSTGRES_MIGRATIONS,
    Migration,
    check_not_newer,
    check_numbering,
    schema_version,
)

__all__ = ["apply_postgres_migrations"]

_MIGRATION_LOCK = 0x7461696C6E6574  # pg_advisory_xact_lock key: "tailnet"


def apply_postgres_migrations(
    conn: psycopg.Connection[Any], migrations: tuple[Migration, ...] = POSTGRES_MIGRATIONS
) -> list[int]:
    """Bring the database up to the last migration; the versions applied now.

    Each migration is one transaction holding an advisory lock, so replicas
    starting together migrate once. `conn` must be in autocommit mode.
    """
    check_numbering(migrations)
    with conn.transaction():
        current = _lock_schema(conn)
    check_not_newer(current, migrations)
    applied = []
    for migration in migrations:
        if migration.version <= current:
            continue
        with conn.transaction():
            # Another replica may have migrated while we waited for the lock.
            if _lock_schema(conn) >= migration.version:
                continue
            for statement in migration.statements:
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_version (version, description) VALUES (%s, %s)",
                (migration.version, migration.description),
            )
        applied.append(migration.version)
    return applied


def _lock_schema(conn: psycopg.Connection[Any]) -> int:
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_version ("
        " version integer PRIMARY KEY, description text NOT NULL)"
    )
    return schema_version(conn)
