"""Numbered schema migrations, applied in order when the store opens.

Each migration runs in its own transaction together with the row recording
it, so a crash leaves the file either before or after a migration, never in
between. Never edit a released migration; add the next number.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from server.store.model import SchemaError

__all__ = ["MIGRATIONS", "Migration", "apply_migrations", "schema_version"]


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    description: str
    statements: tuple[str, ...]


# Keys are stored as their 32 raw bytes, addresses and times as text
# (ISO 8601 in UTC, so text order is time order), lists as JSON arrays.
MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "nodes, pre-auth keys, pending logins",
        (
            """
            CREATE TABLE preauth_keys (
                id          INTEGER PRIMARY KEY AUTOINCREMENT,
                prefix      TEXT    NOT NULL UNIQUE,
                secret_hash BLOB    NOT NULL,
                user_name   TEXT    NOT NULL,
                reusable    INTEGER NOT NULL,
                ephemeral   INTEGER NOT NULL,
                tags        TEXT    NOT NULL,
                created     TEXT    NOT NULL,
                expiration  TEXT,
                used        INTEGER NOT NULL DEFAULT 0,
                revoked     INTEGER NOT NULL DEFAULT 0
            )
            """,
            """
            CREATE TABLE nodes (
                id          INTEGER PRIMARY KEY AUTOINCREMENT,
                machine_key BLOB    NOT NULL UNIQUE,
                node_key    BLOB    NOT NULL UNIQUE,
                disco_key   BLOB    NOT NULL,
                ipv4        TEXT    UNIQUE,
                ipv6        TEXT    UNIQUE,
                hostname    TEXT    NOT NULL,
                given_name  TEXT    NOT NULL UNIQUE,
                user_name   TEXT,
                tags        TEXT    NOT NULL,
                auth_key_id INTEGER REFERENCES preauth_keys (id) ON DELETE SET NULL,
                ephemeral   INTEGER NOT NULL,
                created     TEXT    NOT NULL,
                last_seen   TEXT,
                key_expiry  TEXT,
                hostinfo    TEXT    NOT NULL,
                endpoints   TEXT    NOT NULL,
                capver      INTEGER NOT NULL
            )
            """,
            "CREATE INDEX nodes_ephemeral ON nodes (ephemeral) WHERE ephemeral",
            """
            CREATE TABLE pending_logins (
                auth_id     TEXT    PRIMARY KEY,
                machine_key BLOB    NOT NULL,
                node_key    BLOB    NOT NULL,
                ephemeral   INTEGER NOT NULL,
                created     TEXT    NOT NULL
            )
            """,
        ),
    ),
    Migration(
        2,
        "API keys for the admin API over HTTP",
        (
            """
            CREATE TABLE api_keys (
                id          INTEGER PRIMARY KEY AUTOINCREMENT,
                prefix      TEXT    NOT NULL UNIQUE,
                secret_hash BLOB    NOT NULL,
                created     TEXT    NOT NULL,
                expiration  TEXT,
                last_used   TEXT
            )
            """,
        ),
    ),
    Migration(
        3,
        "API key scopes",
        ("ALTER TABLE api_keys ADD COLUMN scope TEXT NOT NULL DEFAULT 'admin'",),
    ),
)


def schema_version(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
    return int(row[0]) if row is not None and row[0] is not None else 0


def apply_migrations(
    conn: sqlite3.Connection, migrations: tuple[Migration, ...] = MIGRATIONS
) -> list[int]:
    """Bring the database up to the last migration; the versions applied now.

    The connection must be in autocommit mode (isolation_level=None) so the
    transactions here are the only ones.
    """
    _check_numbering(migrations)
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_version ("
        " version INTEGER PRIMARY KEY, description TEXT NOT NULL)"
    )
    known = migrations[-1].version if migrations else 0
    current = schema_version(conn)
    if current > known:
        raise SchemaError(
            f"the database is at schema version {current}, newer than this tailnetd "
            f"understands ({known}); upgrade tailnetd or restore a backup"
        )
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


def _check_numbering(migrations: tuple[Migration, ...]) -> None:
    expected = list(range(1, len(migrations) + 1))
    if [m.version for m in migrations] != expected:
        raise ValueError("migrations must be numbered 1, 2, 3 … without gaps")
