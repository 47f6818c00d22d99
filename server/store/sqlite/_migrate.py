"""Applying the sqlite list of migrations (`server.store.migrations.MIGRATIONS`)."""

from __future__ import annotations

import sqlite3

from server.store.migrations import (
    MIGRATIONS,
    Migration,
    check_not_newer,
    check_numbering,
    schema_version,
)

__all__ = ["apply_migrations"]


def apply_migrations(
    conn: sqlite3.Connection, migrations: tuple[Migration, ...] = MIGRATIONS
) -> list[int]:
    """Bring the database up to the last migration; the versions applied now.

    The connection must be in autocommit mode (isolation_level=None) so the
    transactions here are the only ones.
    """
    check_numbering(migrations)
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_version ("
        " version INTEGER PRIMARY KEY, description TEXT NOT NULL)"
    )
    current = schema_version(conn)
    check_not_newer(current, migrations)
    applied = []
    for migration in migrations:
        if migration.version <= current:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Another process may have migrated while we waited for the lock.
            if schema_version(conn) >= migration.version:
                conn.execute("ROLLBACK")
                continue
            for statement in migration.statements:
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_version (version, description) VALUES (?, ?)",
                (migration.version, migration.description),
            )
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        applied.append(migration.version)
    return applied
