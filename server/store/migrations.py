"""Numbered schema migrations, applied in order when the store opens.

Each migration runs in its own transaction together with the row recording
it, so a crash leaves the file either before or after a migration, never in
between. Never edit a released migration; add the next number.

There is one list per backend, side by side: `MIGRATIONS` for sqlite and
`POSTGRES_MIGRATIONS`, with the same numbers and descriptions (a test holds
them to that), so "schema version 2" means the same tables in both. Each
backend applies its list: `server.store.sqlite.apply_migrations`,
`server.store.postgres.apply_postgres_migrations`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from server.store.model import SchemaError

if TYPE_CHECKING:
    from server.store._db import Db

__all__ = [
    "MIGRATIONS",
    "POSTGRES_MIGRATIONS",
    "Migration",
    "check_not_newer",
    "check_numbering",
    "schema_version",
]


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
    Migration(
        4,
        "audit trail and webhook outbox",
        (
            """
            CREATE TABLE audit_log (
                id          INTEGER PRIMARY KEY AUTOINCREMENT,
                at          TEXT    NOT NULL,
                actor       TEXT    NOT NULL,
                action      TEXT    NOT NULL,
                target      TEXT,
                params      TEXT    NOT NULL,
                status      INTEGER NOT NULL,
                result      TEXT    NOT NULL,
                detail      TEXT
            )
            """,
            "CREATE INDEX audit_log_at ON audit_log (at)",
            """
            CREATE TABLE webhook_outbox (
                id          INTEGER PRIMARY KEY AUTOINCREMENT,
                url         TEXT    NOT NULL,
                queue       TEXT    NOT NULL,
                body        TEXT    NOT NULL,
                attempts    INTEGER NOT NULL DEFAULT 0
            )
            """,
        ),
    ),
    Migration(
        5,
        "pre-auth keys declared in git, by name",
        (
            "ALTER TABLE preauth_keys ADD COLUMN declared_name TEXT",
            "CREATE UNIQUE INDEX preauth_keys_declared_name ON preauth_keys (declared_name)",
        ),
    ),
    Migration(
        6,
        "device approval: nodes waiting for an operator",
        ("ALTER TABLE nodes ADD COLUMN approved INTEGER NOT NULL DEFAULT 1",),
    ),
    Migration(
        7,
        "identity-provider groups of each user's last login",
        (
            """
            CREATE TABLE login_groups (
                email       TEXT    PRIMARY KEY,
                groups      TEXT    NOT NULL,
                updated     TEXT    NOT NULL
            )
            """,
        ),
    ),
    Migration(
        8,
        "OAuth clients, and the API keys issued to them as access tokens",
        (
            """
            CREATE TABLE oauth_clients (
                id          INTEGER PRIMARY KEY AUTOINCREMENT,
                prefix      TEXT    NOT NULL UNIQUE,
                secret_hash BLOB    NOT NULL,
                scopes      TEXT    NOT NULL,
                description TEXT    NOT NULL,
                created     TEXT    NOT NULL,
                expiration  TEXT,
                last_used   TEXT
            )
            """,
            "ALTER TABLE api_keys ADD COLUMN oauth_client INTEGER"
            " REFERENCES oauth_clients (id) ON DELETE CASCADE",
        ),
    ),
    Migration(
        9,
        "routes an operator approved at runtime, per node",
        ("ALTER TABLE nodes ADD COLUMN runtime_routes TEXT NOT NULL DEFAULT '[]'",),
    ),
    Migration(
        10,
        "people admitted at runtime: identity-provider logins not declared in git",
        (
            """
            CREATE TABLE runtime_users (
                email       TEXT    PRIMARY KEY,
                created     TEXT    NOT NULL,
                last_login  TEXT    NOT NULL
            )
            """,
        ),
    ),
)


# PostgreSQL's own types: keys bytea, addresses inet, times timestamptz, lists
# jsonb, flags boolean; ids from identity columns, which never hand out a
# number twice (as AUTOINCREMENT). `node_index_clock` is the backend's
# counterpart of sqlite's `PRAGMA data_version`: writers of addresses and names
# lock its one row and bump it (see server/store/postgres/).
POSTGRES_MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "nodes, pre-auth keys, pending logins",
        (
            """
            CREATE TABLE preauth_keys (
                id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                prefix      text        NOT NULL UNIQUE,
                secret_hash bytea       NOT NULL,
                user_name   text        NOT NULL,
                reusable    boolean     NOT NULL,
                ephemeral   boolean     NOT NULL,
                tags        jsonb       NOT NULL,
                created     timestamptz NOT NULL,
                expiration  timestamptz,
                used        boolean     NOT NULL DEFAULT false,
                revoked     boolean     NOT NULL DEFAULT false
            )
            """,
            """
            CREATE TABLE nodes (
                id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                machine_key bytea       NOT NULL UNIQUE,
                node_key    bytea       NOT NULL UNIQUE,
                disco_key   bytea       NOT NULL,
                ipv4        inet        UNIQUE,
                ipv6        inet        UNIQUE,
                hostname    text        NOT NULL,
                given_name  text        NOT NULL UNIQUE,
                user_name   text,
                tags        jsonb       NOT NULL,
                auth_key_id bigint      REFERENCES preauth_keys (id) ON DELETE SET NULL,
                ephemeral   boolean     NOT NULL,
                created     timestamptz NOT NULL,
                last_seen   timestamptz,
                key_expiry  timestamptz,
                hostinfo    text        NOT NULL,
                endpoints   jsonb       NOT NULL,
                capver      integer     NOT NULL
            )
            """,
            "CREATE INDEX nodes_ephemeral ON nodes (ephemeral) WHERE ephemeral",
            """
            CREATE TABLE pending_logins (
                auth_id     text        PRIMARY KEY,
                machine_key bytea       NOT NULL,
                node_key    bytea       NOT NULL,
                ephemeral   boolean     NOT NULL,
                created     timestamptz NOT NULL
            )
            """,
            """
            CREATE TABLE node_index_clock (
                one         boolean     PRIMARY KEY DEFAULT true CHECK (one),
                version     bigint      NOT NULL
            )
            """,
            "INSERT INTO node_index_clock (version) VALUES (0)",
        ),
    ),
    Migration(
        2,
        "API keys for the admin API over HTTP",
        (
            """
            CREATE TABLE api_keys (
                id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                prefix      text        NOT NULL UNIQUE,
                secret_hash bytea       NOT NULL,
                created     timestamptz NOT NULL,
                expiration  timestamptz,
                last_used   timestamptz
            )
            """,
        ),
    ),
    Migration(
        3,
        "API key scopes",
        ("ALTER TABLE api_keys ADD COLUMN scope text NOT NULL DEFAULT 'admin'",),
    ),
    Migration(
        4,
        "audit trail and webhook outbox",
        (
            """
            CREATE TABLE audit_log (
                id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                at          timestamptz NOT NULL,
                actor       text        NOT NULL,
                action      text        NOT NULL,
                target      text,
                params      text        NOT NULL,
                status      integer     NOT NULL,
                result      text        NOT NULL,
                detail      text
            )
            """,
            "CREATE INDEX audit_log_at ON audit_log (at)",
            """
            CREATE TABLE webhook_outbox (
                id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                url         text        NOT NULL,
                queue       text        NOT NULL,
                body        text        NOT NULL,
                attempts    integer     NOT NULL DEFAULT 0
            )
            """,
        ),
    ),
    Migration(
        5,
        "pre-auth keys declared in git, by name",
        (
            "ALTER TABLE preauth_keys ADD COLUMN declared_name text",
            "CREATE UNIQUE INDEX preauth_keys_declared_name ON preauth_keys (declared_name)",
        ),
    ),
    Migration(
        6,
        "device approval: nodes waiting for an operator",
        ("ALTER TABLE nodes ADD COLUMN approved boolean NOT NULL DEFAULT true",),
    ),
    Migration(
        7,
        "identity-provider groups of each user's last login",
        (
            """
            CREATE TABLE login_groups (
                email       text        PRIMARY KEY,
                groups      jsonb       NOT NULL,
                updated     timestamptz NOT NULL
            )
            """,
        ),
    ),
    Migration(
        8,
        "OAuth clients, and the API keys issued to them as access tokens",
        (
            """
            CREATE TABLE oauth_clients (
                id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                prefix      text        NOT NULL UNIQUE,
                secret_hash bytea       NOT NULL,
                scopes      jsonb       NOT NULL,
                description text        NOT NULL,
                created     timestamptz NOT NULL,
                expiration  timestamptz,
                last_used   timestamptz
            )
            """,
            "ALTER TABLE api_keys ADD COLUMN oauth_client bigint"
            " REFERENCES oauth_clients (id) ON DELETE CASCADE",
        ),
    ),
    Migration(
        9,
        "routes an operator approved at runtime, per node",
        ("ALTER TABLE nodes ADD COLUMN runtime_routes jsonb NOT NULL DEFAULT '[]'::jsonb",),
    ),
    Migration(
        10,
        "people admitted at runtime: identity-provider logins not declared in git",
        (
            """
            CREATE TABLE runtime_users (
                email       text        PRIMARY KEY,
                created     timestamptz NOT NULL,
                last_login  timestamptz NOT NULL
            )
            """,
        ),
    ),
)


def schema_version(conn: Db) -> int:
    """The last migration applied (0: none), on either backend."""
    row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
    return int(row[0]) if row is not None and row[0] is not None else 0


def check_not_newer(current: int, migrations: tuple[Migration, ...]) -> None:
    known = migrations[-1].version if migrations else 0
    if current > known:
        raise SchemaError(
            f"the database is at schema version {current}, newer than this tailnetd "
            f"understands ({known}); upgrade tailnetd or restore a backup"
        )


def check_numbering(migrations: tuple[Migration, ...]) -> None:
    expected = list(range(1, len(migrations) + 1))
    if [m.version for m in migrations] != expected:
        raise ValueError("migrations must be numbered 1, 2, 3 … without gaps")
