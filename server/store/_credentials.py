"""Credentials in SQL both backends run: pre-auth keys (declared in git or
made at runtime), API keys, and OAuth clients with their access tokens.

A mixin of `SqlStore`; `consume_preauth_key` also serves node registration
inside its own transaction.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import replace
from datetime import datetime

from server.store import _declared as declared
from server.store import _keytables as keytables
from server.store import _oauthtables as oauth
from server.store import _rows as rows
from server.store._db import Db, SqlBackend
from server.store.model import ApiKey, ApiScope, KeyRejected, OAuthClient, PreAuthKey, Rng

__all__ = ["CredentialTables", "consume_preauth_key"]

_NOT_FOUND = "auth key not found"


class CredentialTables(SqlBackend):
    # Pre-auth keys

    def create_preauth_key(
        self,
        user: str,
        *,
        reusable: bool,
        ephemeral: bool,
        tags: Sequence[str],
        expiration: datetime | None,
        now: datetime,
        rng: Rng,
    ) -> tuple[str, PreAuthKey]:
        with self._write() as db:
            text, prefix, secret_hash = keytables.draw_key(db, keytables.PREAUTH_KEYS, rng)
            cursor = db.execute(
                "INSERT INTO preauth_keys (prefix, secret_hash, user_name, reusable, ephemeral,"
                " tags, created, expiration) VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (
                    prefix,
                    secret_hash,
                    user,
                    reusable,
                    ephemeral,
                    rows.json_list(tags),
                    rows.ts(now),
                    rows.ts_or_none(expiration),
                ),
            )
            return text, self._find_key(db, cursor.fetchone()[0])

    def check_preauth_key(self, text: str, now: datetime) -> PreAuthKey:
        """The key if it may register a node now, else KeyRejected saying why."""
        with self._read() as db:
            row = keytables.row_for_text(db, keytables.PREAUTH_KEYS, text)
        if row is None:
            raise KeyRejected(_NOT_FOUND)
        key = rows.key_from_row(row)
        _check_usable(key, now)
        return key

    def use_preauth_key(self, key_id: int) -> PreAuthKey:
        """Record a registration with the key; a single-use key can do this once."""
        with self._write() as db:
            return consume_preauth_key(db, key_id, None, self._FOR_UPDATE)

    def list_preauth_keys(self, user: str | None = None) -> list[PreAuthKey]:
        query = f"SELECT {rows.KEY_COLUMNS} FROM preauth_keys"
        params: tuple[object, ...] = ()
        if user is not None:
            query, params = query + " WHERE user_name = ?", (user,)
        with self._read() as db:
            found = db.execute(query + " ORDER BY id", params).fetchall()
        return [rows.key_from_row(row) for row in found]

    def expire_preauth_key(self, id_or_prefix: int | str, now: datetime) -> PreAuthKey:
        with self._write() as db:
            return rows.key_from_row(
                keytables.expire(db, keytables.PREAUTH_KEYS, id_or_prefix, now)
            )

    def put_declared_key(
        self,
        name: str,
        text: str,
        *,
        user: str,
        reusable: bool,
        ephemeral: bool,
        tags: Sequence[str],
        expiration: datetime | None,
        now: datetime,
    ) -> tuple[PreAuthKey, declared.Outcome]:
        """The key declared in git as `name`, created, rotated or updated to match."""
        with self._write() as db:
            return declared.put_declared(
                db, name, text, user=user, reusable=reusable, ephemeral=ephemeral, tags=tags,
                expiration=expiration, now=now, lock=self._FOR_UPDATE,
            )  # fmt: skip

    def expire_undeclared_keys(self, names: Collection[str], now: datetime) -> list[PreAuthKey]:
        """Expire the declared keys git no longer declares; those expired now."""
        with self._write() as db:
            return declared.expire_undeclared(db, names, now)

    def revoke_preauth_key(self, id_or_prefix: int | str) -> PreAuthKey:
        with self._write() as db:
            key = self._find_key(db, id_or_prefix)
            db.execute("UPDATE preauth_keys SET revoked = TRUE WHERE id = ?", (key.id,))
            return self._find_key(db, key.id)

    @staticmethod
    def _find_key(db: Db, id_or_prefix: int | str) -> PreAuthKey:
        row = keytables.find_row(db, keytables.PREAUTH_KEYS, id_or_prefix)
        return rows.key_from_row(row)

    # API keys

    def create_api_key(
        self,
        *,
        expiration: datetime | None,
        now: datetime,
        rng: Rng,
        scope: ApiScope = "admin",
    ) -> tuple[str, ApiKey]:
        with self._write() as db:
            text, prefix, secret_hash = keytables.draw_key(db, keytables.API_KEYS, rng)
            cursor = db.execute(
                "INSERT INTO api_keys (prefix, secret_hash, created, expiration, scope)"
                " VALUES (?, ?, ?, ?, ?) RETURNING id",
                (prefix, secret_hash, rows.ts(now), rows.ts_or_none(expiration), scope),
            )
            return text, self._find_api_key(db, cursor.fetchone()[0])

    def use_api_key(self, text: str, now: datetime) -> ApiKey:
        """The key if it may be used now (recording `now` as its last use),
        else KeyRejected saying why."""
        with self._write() as db:
            row = keytables.row_for_text(db, keytables.API_KEYS, text)
            if row is None:
                raise KeyRejected("API key not found")
            key = rows.api_key_from_row(row)
            if key.expiration is not None and now >= key.expiration:
                raise KeyRejected("API key expired")
            db.execute("UPDATE api_keys SET last_used = ? WHERE id = ?", (rows.ts(now), key.id))
            return self._find_api_key(db, key.id)

    def list_api_keys(self) -> list[ApiKey]:
        with self._read() as db:
            found = db.execute(
                f"SELECT {rows.API_KEY_COLUMNS} FROM api_keys"
                " WHERE oauth_client IS NULL ORDER BY id"
            ).fetchall()
        return [rows.api_key_from_row(row) for row in found]

    def expire_api_key(self, id_or_prefix: int | str, now: datetime) -> ApiKey:
        with self._write() as db:
            return rows.api_key_from_row(
                keytables.expire(db, keytables.API_KEYS, id_or_prefix, now)
            )

    @staticmethod
    def _find_api_key(db: Db, id_or_prefix: int | str) -> ApiKey:
        row = keytables.find_row(db, keytables.API_KEYS, id_or_prefix)
        return rows.api_key_from_row(row)

    # OAuth clients (the client-credentials grant) and their access tokens

    def create_oauth_client(
        self, *, scopes: Sequence[str], description: str, now: datetime, rng: Rng
    ) -> tuple[str, OAuthClient]:
        with self._write() as db:
            return oauth.create_client(db, scopes, description, now, rng)

    def list_oauth_clients(self) -> list[OAuthClient]:
        with self._read() as db:
            return oauth.list_clients(db)

    def delete_oauth_client(self, id_or_client_id: int | str) -> OAuthClient:
        with self._write() as db:
            return oauth.delete_client(db, id_or_client_id)

    def use_oauth_client(self, client_id: str, secret: str, now: datetime) -> OAuthClient:
        with self._write() as db:
            return oauth.use_client(db, client_id, secret, now)

    def issue_oauth_token(
        self, client: OAuthClient, *, scope: ApiScope, expiration: datetime, now: datetime,
        rng: Rng,
    ) -> tuple[str, ApiKey]:  # fmt: skip
        with self._write() as db:
            return oauth.issue_token(db, client, scope, expiration, now, rng)


def consume_preauth_key(db: Db, key_id: int, now: datetime | None, lock: str) -> PreAuthKey:
    # Inside the caller's write transaction. One statement marks the key
    # used where it may be: the UPDATE takes the row's lock (PostgreSQL
    # re-checks its condition after waiting for it), so two registrations
    # racing for one single-use key cannot both pass. Reusable keys are
    # marked too, so listings show they have been used.
    row = db.execute(
        "UPDATE preauth_keys SET used = TRUE WHERE id = ? AND (reusable OR NOT used)"
        f" RETURNING {rows.KEY_COLUMNS}",
        (key_id,),
    ).fetchone()
    if row is None:  # no such key, or a single-use key used already
        key = rows.key_from_row(keytables.find_row(db, keytables.PREAUTH_KEYS, key_id, lock=lock))
        if now is not None:
            _check_usable(key, now)
        raise KeyRejected("auth key already used")
    key = rows.key_from_row(row)
    if now is not None:
        # What it was before this statement; a refusal rolls the mark back.
        _check_usable(replace(key, used=False), now)
    return key


def _check_usable(key: PreAuthKey, now: datetime) -> None:
    if key.revoked:
        raise KeyRejected("auth key revoked")
    if key.used and not key.reusable:
        raise KeyRejected("auth key already used")
    if key.expiration is not None and now >= key.expiration:
        raise KeyRejected("auth key expired")
