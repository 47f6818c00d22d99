"""SQL shared by the key tables (pre-auth keys, API keys).

Both have `id`, `prefix`, `secret_hash` and `expiration` columns. Table and
column names come from the constants here, never from outside input.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from server.store import _rows as rows
from server.store.authkeys import API_KEY, AUTH_KEY, KeyFormat
from server.store.model import NotFound, Rng

if TYPE_CHECKING:
    from server.store._db import Db

__all__ = [
    "API_KEYS",
    "PREAUTH_KEYS",
    "KeyTable",
    "draw_key",
    "expire",
    "find_row",
    "row_for_text",
]


@dataclass(frozen=True, slots=True)
class KeyTable:
    name: str
    columns: str  # what the row converter in _rows reads, in its order
    fmt: KeyFormat
    what: str  # for messages


PREAUTH_KEYS = KeyTable("preauth_keys", rows.KEY_COLUMNS, AUTH_KEY, "auth key")
API_KEYS = KeyTable("api_keys", rows.API_KEY_COLUMNS, API_KEY, "API key")


def draw_key(db: Db, table: KeyTable, rng: Rng) -> tuple[str, str, bytes]:
    """(key text, prefix, secret hash) for a new key whose prefix is free."""
    while True:  # a repeated 12-char prefix is rare; just draw again
        text, prefix, secret = table.fmt.generate(rng)
        clash = db.execute(f"SELECT 1 FROM {table.name} WHERE prefix = ?", (prefix,))
        if clash.fetchone() is None:
            return text, prefix, table.fmt.hash_secret(prefix, secret)


def row_for_text(db: Db, table: KeyTable, text: str) -> rows.Row | None:
    """The row of the key this text is, or None if it is no key of ours."""
    parsed = table.fmt.parse(text)
    if parsed is None:
        return None
    prefix, secret = parsed
    row = db.execute(
        f"SELECT {table.columns}, secret_hash FROM {table.name} WHERE prefix = ?", (prefix,)
    ).fetchone()
    # A wrong secret reads exactly like an unknown key: the prefix is no oracle.
    if row is None or not table.fmt.secret_matches(prefix, secret, row[-1]):
        return None
    return tuple(row[:-1])


def find_row(db: Db, table: KeyTable, id_or_prefix: int | str, lock: str = "") -> rows.Row:
    """The key's row; `lock` is the backend's row lock clause (" FOR UPDATE") or ""."""
    column = "id" if isinstance(id_or_prefix, int) else "prefix"
    row = db.execute(
        f"SELECT {table.columns} FROM {table.name} WHERE {column} = ?{lock}", (id_or_prefix,)
    ).fetchone()
    if row is None:
        raise NotFound(f"no {table.what} with {column} {id_or_prefix!r}")
    return tuple(row)


def expire(db: Db, table: KeyTable, id_or_prefix: int | str, now: datetime) -> rows.Row:
    """Make the key expire `now`; the row as it is afterwards."""
    key_id = find_row(db, table, id_or_prefix)[0]
    # An earlier expiration stays: expiring never extends a key's life. (Times
    # compare as times in both backends: sqlite stores fixed-width UTC text.)
    db.execute(
        f"UPDATE {table.name} SET expiration = ?"
        " WHERE id = ? AND (expiration IS NULL OR expiration > ?)",
        (rows.ts(now), key_id, rows.ts(now)),
    )
    return find_row(db, table, key_id)
