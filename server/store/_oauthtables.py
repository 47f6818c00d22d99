"""SQL of OAuth clients and the access tokens issued to them.

A client's secret reads `tskey-client-<client id>-<secret>` (Tailscale's
layout: the id is the public prefix); only a hash of the secret is stored. An
access token is a row of `api_keys` with `oauth_client` set and a short
expiration, so every route authenticates it as it does an API key; tokens are
left out of the API key list and go with their client.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from server.store import _keytables as keytables
from server.store import _rows as rows
from server.store.authkeys import KeyFormat
from server.store.model import ApiKey, ApiScope, KeyRejected, NotFound, OAuthClient, Rng

if TYPE_CHECKING:
    from server.store._db import Db

__all__ = ["create_client", "delete_client", "issue_token", "list_clients", "use_client"]

CLIENT_SECRET = KeyFormat("tskey-client-", b"tailnetd oauth client v1\x00")
_COLUMNS = "id, prefix, scopes, description, created, last_used"
CLIENTS = keytables.KeyTable("oauth_clients", _COLUMNS, CLIENT_SECRET, "OAuth client")
_REJECTED = "unknown OAuth client or wrong secret"


def _client(row: rows.Row) -> OAuthClient:
    return OAuthClient(
        id=row[0],
        client_id=row[1],
        scopes=rows.str_tuple(row[2]),
        description=row[3],
        created=rows.dt_required(row[4]),
        last_used=rows.dt(row[5]),
    )


def create_client(
    db: Db, scopes: Sequence[str], description: str, now: datetime, rng: Rng
) -> tuple[str, OAuthClient]:
    text, prefix, secret_hash = keytables.draw_key(db, CLIENTS, rng)
    cursor = db.execute(
        "INSERT INTO oauth_clients (prefix, secret_hash, scopes, description, created)"
        " VALUES (?, ?, ?, ?, ?) RETURNING id",
        (prefix, secret_hash, rows.json_list(scopes), description, rows.ts(now)),
    )
    return text, _client(keytables.find_row(db, CLIENTS, cursor.fetchone()[0]))


def list_clients(db: Db) -> list[OAuthClient]:
    found = db.execute(f"SELECT {_COLUMNS} FROM oauth_clients ORDER BY id").fetchall()
    return [_client(tuple(row)) for row in found]


def delete_client(db: Db, id_or_client_id: int | str) -> OAuthClient:
    """Delete the client and every token it was issued: they stop working at once."""
    client = _client(keytables.find_row(db, CLIENTS, id_or_client_id))
    db.execute("DELETE FROM api_keys WHERE oauth_client = ?", (client.id,))
    db.execute("DELETE FROM oauth_clients WHERE id = ?", (client.id,))
    return client


def use_client(db: Db, client_id: str, secret: str, now: datetime) -> OAuthClient:
    """The client whose id and secret these are (recording its use), else KeyRejected."""
    row = keytables.row_for_text(db, CLIENTS, secret)
    if row is None or row[1] != client_id:
        raise KeyRejected(_REJECTED)
    db.execute("UPDATE oauth_clients SET last_used = ? WHERE id = ?", (rows.ts(now), row[0]))
    return _client(row)


def issue_token(
    db: Db, client: OAuthClient, scope: ApiScope, expiration: datetime, now: datetime, rng: Rng
) -> tuple[str, ApiKey]:
    """A new access token: an API key of `client` that expires at `expiration`.
    The client's expired tokens are dropped here, so they never pile up."""
    try:
        keytables.find_row(db, CLIENTS, client.id)
    except NotFound:
        raise KeyRejected(_REJECTED) from None  # deleted since it was checked
    db.execute(
        "DELETE FROM api_keys WHERE oauth_client = ? AND expiration <= ?",
        (client.id, rows.ts(now)),
    )
    text, prefix, secret_hash = keytables.draw_key(db, keytables.API_KEYS, rng)
    cursor = db.execute(
        "INSERT INTO api_keys (prefix, secret_hash, created, expiration, scope, oauth_client)"
        " VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
        (prefix, secret_hash, rows.ts(now), rows.ts(expiration), scope, client.id),
    )
    row = keytables.find_row(db, keytables.API_KEYS, cursor.fetchone()[0])
    return text, rows.api_key_from_row(row)
