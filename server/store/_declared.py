"""SQL for pre-auth keys declared in git (keys.yaml): one row per declared name.

The server brings the rows to what the served commit declares (`server/declared_keys.py`);
the key text comes from the operator, so only its prefix and hash are stored, as for any
pre-auth key. A changed secret rotates the key in place: the old text stops working at once.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Literal

from server.store import _keytables as keytables
from server.store import _rows as rows
from server.store.model import Conflict, PreAuthKey

if TYPE_CHECKING:
    from server.store._db import Db

__all__ = ["Outcome", "expire_undeclared", "put_declared"]

Outcome = Literal["created", "rotated", "updated", "unchanged"]

_TABLE = keytables.PREAUTH_KEYS


def _by_name(db: Db, name: str, lock: str) -> tuple[rows.Row, bytes] | None:
    row = db.execute(
        f"SELECT {_TABLE.columns}, secret_hash FROM preauth_keys WHERE declared_name = ?{lock}",
        (name,),
    ).fetchone()
    return None if row is None else (tuple(row[:-1]), bytes(row[-1]))


def _prefix_taken(db: Db, prefix: str, name: str) -> bool:
    row = db.execute(
        "SELECT 1 FROM preauth_keys"
        " WHERE prefix = ? AND (declared_name IS NULL OR declared_name <> ?)",
        (prefix, name),
    ).fetchone()
    return row is not None


def put_declared(
    db: Db,
    name: str,
    text: str,
    *,
    user: str,
    reusable: bool,
    ephemeral: bool,
    tags: Sequence[str],
    expiration: datetime | None,
    now: datetime,
    lock: str = "",
) -> tuple[PreAuthKey, Outcome]:
    """Make the key declared as `name` be `text` with these properties. ValueError when
    `text` is no pre-auth key text; Conflict when another key already has its prefix."""
    parsed = _TABLE.fmt.parse(text)
    if parsed is None:
        raise ValueError(
            "not a pre-auth key: expected tskey-auth- followed by 12 lowercase letters or "
            "digits, '-', and 48 letters or digits (`tailnetd keys generate` makes one)"
        )
    prefix, secret = parsed
    if _prefix_taken(db, prefix, name):
        raise Conflict("another pre-auth key already has this key's prefix: generate a new key")
    wanted = (user, reusable, ephemeral, tuple(tags), expiration)
    found = _by_name(db, name, lock)
    values = (user, reusable, ephemeral, rows.json_list(tags), rows.ts_or_none(expiration))
    if found is None:
        cursor = db.execute(
            "INSERT INTO preauth_keys (prefix, secret_hash, user_name, reusable, ephemeral,"
            " tags, expiration, created, declared_name) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " RETURNING id",
            (prefix, _TABLE.fmt.hash_secret(prefix, secret), *values, rows.ts(now), name),
        )
        return _get(db, cursor.fetchone()[0]), "created"
    row, stored_hash = found
    key = rows.key_from_row(row)
    same_secret = key.prefix == prefix and _TABLE.fmt.secret_matches(prefix, secret, stored_hash)
    if not same_secret:
        # A new secret: the old text stops working now, and the key is fresh (unused).
        db.execute(
            "UPDATE preauth_keys SET prefix = ?, secret_hash = ?, user_name = ?, reusable = ?,"
            " ephemeral = ?, tags = ?, expiration = ?, created = ?, used = FALSE,"
            " revoked = FALSE WHERE id = ?",
            (prefix, _TABLE.fmt.hash_secret(prefix, secret), *values, rows.ts(now), key.id),
        )
        return _get(db, key.id), "rotated"
    have = (key.user, key.reusable, key.ephemeral, key.tags, key.expiration)
    if have == wanted and not key.revoked:
        return key, "unchanged"
    db.execute(
        "UPDATE preauth_keys SET user_name = ?, reusable = ?, ephemeral = ?, tags = ?,"
        " expiration = ?, revoked = FALSE WHERE id = ?",
        (*values, key.id),
    )
    return _get(db, key.id), "updated"


def expire_undeclared(db: Db, names: Collection[str], now: datetime) -> list[PreAuthKey]:
    """Expire, at `now`, every declared key still in force whose name is not in `names`."""
    found = db.execute(
        f"SELECT {_TABLE.columns} FROM preauth_keys WHERE declared_name IS NOT NULL"
        " AND (expiration IS NULL OR expiration > ?) ORDER BY id",
        (rows.ts(now),),
    ).fetchall()
    out = []
    for row in found:
        key = rows.key_from_row(tuple(row))
        if key.declared_name not in names:
            out.append(rows.key_from_row(keytables.expire(db, _TABLE, key.id, now)))
    return out


def _get(db: Db, key_id: int) -> PreAuthKey:
    return rows.key_from_row(keytables.find_row(db, _TABLE, key_id))
