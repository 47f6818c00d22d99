"""The store's logic in SQL that sqlite and PostgreSQL both run: one class, two backends.

`SqlStore` holds every `Store` method; a backend subclass supplies the
connection handling: `_write` (a transaction that commits or rolls back, and
with `index=True` one that excludes every other writer of addresses and names,
even in another process), `_read`, and `_index_version`, which says whether
the in-memory `NodeIndex` still matches the database. SQL here uses `?`
placeholders and the common subset of both dialects (RETURNING, TRUE);
`_FOR_UPDATE` is the row lock where the backend has one.

Registration reads the used addresses and names from the in-memory index
(`_nodeindex`) instead of every row, so it costs O(log n), not O(n); the
index is checked against the database inside each of those transactions.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from contextlib import AbstractContextManager
from dataclasses import replace
from datetime import datetime
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from types import TracebackType
from typing import Any, Protocol, Self

from server.protocol.keys import DiscoPublic, MachinePublic, NodePublic
from server.store import _declared as declared
from server.store import _keytables as keytables
from server.store import _oauthtables as oauth
from server.store import _rows as rows
from server.store._eventtables import EventTables
from server.store._nodeindex import NodeIndex
from server.store._rand import LOWER_ALNUM, random_text
from server.store.ipalloc import allocate_ipv4, allocate_ipv6
from server.store.model import (
    AllocationStrategy,
    ApiKey,
    ApiScope,
    Conflict,
    KeyRejected,
    Node,
    NotFound,
    OAuthClient,
    PendingLogin,
    PreAuthKey,
    Registration,
    Rng,
    RuntimeUser,
)
from server.store.names import check_label, label_from_hostname
from server.wire import Hostinfo

__all__ = ["Cursor", "Db", "SqlStore"]

_AUTH_ID_LEN = 32
_NOT_FOUND = "auth key not found"


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...
    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...


class Db(Protocol):
    """A connection inside a transaction (or autocommit, for `_read`)."""

    def execute(self, sql: str, params: Sequence[Any] = (), /) -> Cursor: ...


class SqlStore(EventTables):
    _FOR_UPDATE = ""  # the row lock clause, where the backend has one

    def __init__(
        self,
        ipv4_prefix: IPv4Network | None,
        ipv6_prefix: IPv6Network | None,
        allocation: AllocationStrategy,
        rng: Rng,
    ) -> None:
        self._rng = rng
        self._generation = 0
        self.set_addressing(ipv4_prefix, ipv6_prefix, allocation)
        self._index: NodeIndex | None = None

    # What a backend supplies

    def _write(
        self, *, index: bool = False, one_statement: bool = False
    ) -> AbstractContextManager[Db]:
        """A transaction: committed (and `generation` bumped) if the block returns.

        `one_statement`: the block runs a single statement, which is a
        transaction of its own where the backend autocommits (sqlite: no
        BEGIN and COMMIT around it).

        The backend drops the index when anything but a StoreError ends the
        block: the store's own refusals come before the index changes.
        """
        raise NotImplementedError

    def _read(self) -> AbstractContextManager[Db]:
        raise NotImplementedError

    def _index_version(self, db: Db) -> int:
        """Inside `_write(index=True)`: the version the index must have to be current."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    # Common

    def set_addressing(
        self,
        ipv4_prefix: IPv4Network | None,
        ipv6_prefix: IPv6Network | None,
        allocation: AllocationStrategy,
    ) -> None:
        """Where new nodes' addresses come from; nodes keep the ones they have."""
        if allocation not in ("sequential", "random"):
            raise ValueError(f"unknown allocation strategy {allocation!r}")
        self._ipv4_prefix = ipv4_prefix
        self._ipv6_prefix = ipv6_prefix
        self._allocation: AllocationStrategy = allocation

    @property
    def generation(self) -> int:
        return self._generation

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _node_index(self, db: Db) -> NodeIndex:
        """The index, read again if another connection has changed the database.

        Call inside `_write(index=True)`; change the index only after every
        statement of that transaction that can fail.
        """
        version = self._index_version(db)
        if self._index is None or self._index.version != version:
            self._index = NodeIndex(db, version)
        return self._index

    def _loaded_node_index(self, db: Db) -> NodeIndex | None:
        """The index if it is loaded and current, so a change can be applied to
        it; a stale one is dropped (and read again when a registration needs it)."""
        if self._index is not None and self._index.version != self._index_version(db):
            self._index = None
        return self._index

    # Nodes

    def create_node(self, registration: Registration) -> Node:
        reg = registration
        with self._write(index=True) as db:
            # One read for both checks: the machine, then the node key.
            holders = db.execute(
                "SELECT id, machine_key, given_name FROM nodes"
                " WHERE machine_key = ? OR node_key = ?",
                (reg.machine_key.raw, reg.node_key.raw),
            ).fetchall()
            for node_id, machine_key, name in holders:
                if bytes(machine_key) == reg.machine_key.raw:
                    raise Conflict(
                        f"machine {reg.machine_key.short()} is already registered"
                        f" as node {node_id} ({name})"
                    )
            if holders:
                raise Conflict(
                    f"node key {reg.node_key.short()} is already used by node {holders[0][0]}"
                )
            if reg.auth_key_id is not None:
                self._consume_key(db, reg.auth_key_id, reg.now)
            index = self._node_index(db)
            ipv4, ipv6 = self._allocate(index)
            given_name = index.names.unique(label_from_hostname(reg.hostname))
            cursor = db.execute(
                "INSERT INTO nodes (machine_key, node_key, disco_key, ipv4, ipv6, hostname,"
                " given_name, user_name, tags, auth_key_id, ephemeral, created, last_seen,"
                " key_expiry, hostinfo, endpoints, capver, approved)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, ?, ?, ?, ?, ?)"
                f" RETURNING {rows.NODE_COLUMNS}",
                (
                    reg.machine_key.raw,
                    reg.node_key.raw,
                    (reg.disco_key or DiscoPublic.zero()).raw,
                    None if ipv4 is None else str(ipv4),
                    None if ipv6 is None else str(ipv6),
                    reg.hostname,
                    given_name,
                    reg.user,
                    rows.json_list(reg.tags),
                    reg.auth_key_id,
                    reg.ephemeral,
                    rows.ts(reg.now),
                    rows.ts_or_none(reg.key_expiry),
                    rows.hostinfo_text(Hostinfo() if reg.hostinfo is None else reg.hostinfo),
                    rows.json_list(reg.endpoints),
                    reg.capver,
                    reg.approved,
                ),
            )
            node = rows.node_from_row(cursor.fetchone())
            index.add(node)
            return node

    def get_node(self, node_id: int) -> Node | None:
        with self._read() as db:
            return self._node_where(db, "id = ?", node_id)

    def node_by_node_key(self, node_key: NodePublic) -> Node | None:
        with self._read() as db:
            return self._node_where(db, "node_key = ?", node_key.raw)

    def node_by_machine_key(self, machine_key: MachinePublic) -> Node | None:
        with self._read() as db:
            return self._node_where(db, "machine_key = ?", machine_key.raw)

    def nodes_by_keys(
        self, node_keys: Sequence[NodePublic], machine_key: MachinePublic
    ) -> list[Node]:
        """Every node holding one of `node_keys` or `machine_key`, in one read."""
        marks = " OR ".join(["node_key = ?"] * len(node_keys) + ["machine_key = ?"])
        with self._read() as db:
            found = db.execute(
                f"SELECT {rows.NODE_COLUMNS} FROM nodes WHERE {marks} ORDER BY id",
                (*(key.raw for key in node_keys), machine_key.raw),
            ).fetchall()
        return [rows.node_from_row(row) for row in found]

    def list_nodes(self) -> list[Node]:
        with self._read() as db:
            found = db.execute(f"SELECT {rows.NODE_COLUMNS} FROM nodes ORDER BY id").fetchall()
        return [rows.node_from_row(row) for row in found]

    def update_node_key(self, node_id: int, node_key: NodePublic, now: datetime) -> Node:
        with self._write() as db:
            node = self._node_or_raise(db, node_id)
            if node.node_key != node_key:
                self._check_node_key_free(db, node_key)
            return self._update(db, node_id, node_key=node_key.raw, last_seen=rows.ts(now))

    def reregister_node(self, node_id: int, registration: Registration) -> Node:
        """A known machine logging in again: new key, owner and expiry, same node.

        Id, addresses and given name stay, so peers and DNS see the same node.
        """
        reg = registration
        with self._write() as db:
            node = self._node_or_raise(db, node_id)
            if node.node_key != reg.node_key:
                self._check_node_key_free(db, reg.node_key)
            if reg.auth_key_id is not None:
                self._consume_key(db, reg.auth_key_id, reg.now)
            return self._update(
                db,
                node_id,
                node_key=reg.node_key.raw,
                user_name=reg.user,
                tags=rows.json_list(reg.tags),
                auth_key_id=reg.auth_key_id,
                ephemeral=reg.ephemeral,
                key_expiry=rows.ts_or_none(reg.key_expiry),
                last_seen=rows.ts(reg.now),
            )

    def update_from_map(
        self,
        node_id: int,
        *,
        now: datetime,
        disco_key: DiscoPublic | None = None,
        hostinfo: Hostinfo | None = None,
        hostname: str | None = None,
        endpoints: Sequence[str] | None = None,
        capver: int | None = None,
    ) -> Node:
        changes: dict[str, object] = {"last_seen": rows.ts(now)}
        if disco_key is not None:
            changes["disco_key"] = disco_key.raw
        if hostinfo is not None:
            changes["hostinfo"] = rows.hostinfo_text(hostinfo)
        if hostname is not None:
            changes["hostname"] = hostname
        if endpoints is not None:
            changes["endpoints"] = rows.json_list(endpoints)
        if capver is not None:
            changes["capver"] = capver
        with self._write(one_statement=True) as db:
            return self._update(db, node_id, **changes)

    def touch_last_seen(self, node_id: int, now: datetime) -> None:
        with self._write(one_statement=True) as db:
            self._update(db, node_id, last_seen=rows.ts(now))

    def set_key_expiry(self, node_id: int, when: datetime | None) -> Node:
        with self._write() as db:
            return self._update(db, node_id, key_expiry=rows.ts_or_none(when))

    def set_runtime_routes(self, node_id: int, routes: Sequence[str]) -> Node:
        with self._write() as db:
            return self._update(db, node_id, runtime_routes=rows.json_list(routes))

    def set_node_approved(self, node_id: int, approved: bool) -> Node:
        with self._write() as db:
            return self._update(db, node_id, approved=approved)

    def set_node_tags(self, node_id: int, tags: Sequence[str]) -> Node:
        changes: dict[str, object] = {"tags": rows.json_list(tags)}
        if tags:  # a tagged node belongs to its tags, not a user; its key does not expire
            changes |= {"user_name": None, "key_expiry": None}
        with self._write() as db:
            return self._update(db, node_id, **changes)

    def rename_node(self, node_id: int, new_given_name: str) -> Node:
        name = check_label(new_given_name)
        with self._write(index=True) as db:
            old = self._node_or_raise(db, node_id)
            owner = self._node_where(db, "given_name = ?", name)
            if owner is not None and owner.id != node_id:
                raise Conflict(f"the name {name!r} is already used by node {owner.id}")
            node = self._update(db, node_id, given_name=name)
            if (index := self._loaded_node_index(db)) is not None:
                index.rename(old.given_name, name)
            return node

    def delete_node(self, node_id: int) -> Node:
        with self._write(index=True) as db:
            node = self._node_or_raise(db, node_id)
            db.execute("DELETE FROM nodes WHERE id = ?", (node_id,))
            if (index := self._loaded_node_index(db)) is not None:
                index.remove(node)
            return node

    def delete_ephemeral_inactive(self, before: datetime) -> list[Node]:
        """Remove ephemeral nodes not seen since `before` (never seen: since created).

        The caller keeps connected nodes' last_seen fresh, or they go too.
        """
        condition = "ephemeral AND coalesce(last_seen, created) < ?"
        with self._write(index=True) as db:
            cursor = db.execute(
                f"SELECT {rows.NODE_COLUMNS} FROM nodes WHERE {condition} ORDER BY id",
                (rows.ts(before),),
            )
            gone = [rows.node_from_row(row) for row in cursor.fetchall()]
            db.execute(f"DELETE FROM nodes WHERE {condition}", (rows.ts(before),))
            if (index := self._loaded_node_index(db)) is not None:
                for node in gone:
                    index.remove(node)
            return gone

    def _allocate(self, index: NodeIndex) -> tuple[IPv4Address | None, IPv6Address | None]:
        ipv4 = ipv6 = None
        if self._ipv4_prefix is not None:
            ipv4 = allocate_ipv4(self._ipv4_prefix, index.ipv4, self._allocation, self._rng)
        if self._ipv6_prefix is not None:
            ipv6 = allocate_ipv6(self._ipv6_prefix, index.ipv6, self._allocation, self._rng)
        return ipv4, ipv6

    def _check_node_key_free(self, db: Db, node_key: NodePublic) -> None:
        holder = self._node_where(db, "node_key = ?", node_key.raw)
        if holder is not None:
            raise Conflict(f"node key {node_key.short()} is already used by node {holder.id}")

    def _update(self, db: Db, node_id: int, **changes: object) -> Node:
        # Column names come from this module's callers, never from outside input.
        assignments = ", ".join(f"{column} = ?" for column in changes)
        row = db.execute(
            f"UPDATE nodes SET {assignments} WHERE id = ? RETURNING {rows.NODE_COLUMNS}",
            (*changes.values(), node_id),
        ).fetchone()
        if row is None:
            raise NotFound(f"node {node_id} not found")
        return rows.node_from_row(row)

    @staticmethod
    def _node_where(db: Db, condition: str, value: object) -> Node | None:
        row = db.execute(
            f"SELECT {rows.NODE_COLUMNS} FROM nodes WHERE {condition}", (value,)
        ).fetchone()
        return None if row is None else rows.node_from_row(row)

    def _node_or_raise(self, db: Db, node_id: int) -> Node:
        node = self._node_where(db, "id = ?", node_id)
        if node is None:
            raise NotFound(f"node {node_id} not found")
        return node

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
            return self._consume_key(db, key_id, None)

    def _consume_key(self, db: Db, key_id: int, now: datetime | None) -> PreAuthKey:
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
            key = rows.key_from_row(
                keytables.find_row(db, keytables.PREAUTH_KEYS, key_id, lock=self._FOR_UPDATE)
            )
            if now is not None:
                _check_usable(key, now)
            raise KeyRejected("auth key already used")
        key = rows.key_from_row(row)
        if now is not None:
            # What it was before this statement; a refusal rolls the mark back.
            _check_usable(replace(key, used=False), now)
        return key

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

    # Pending interactive logins

    def create_pending_login(
        self,
        machine_key: MachinePublic,
        node_key: NodePublic,
        ephemeral: bool,
        now: datetime,
        rng: Rng,
    ) -> str:
        auth_id = random_text(rng, LOWER_ALNUM, _AUTH_ID_LEN)
        with self._write() as db:
            db.execute(
                f"INSERT INTO pending_logins ({rows.LOGIN_COLUMNS}) VALUES (?, ?, ?, ?, ?)",
                (auth_id, machine_key.raw, node_key.raw, ephemeral, rows.ts(now)),
            )
        return auth_id

    def get_pending_login(self, auth_id: str) -> PendingLogin | None:
        with self._read() as db:
            row = db.execute(
                f"SELECT {rows.LOGIN_COLUMNS} FROM pending_logins WHERE auth_id = ?", (auth_id,)
            ).fetchone()
        return None if row is None else rows.login_from_row(row)

    def delete_pending_login(self, auth_id: str) -> bool:
        with self._write() as db:
            cursor = db.execute("DELETE FROM pending_logins WHERE auth_id = ?", (auth_id,))
            return cursor.rowcount > 0

    def delete_pending_logins_before(self, before: datetime) -> int:
        with self._write() as db:
            cursor = db.execute("DELETE FROM pending_logins WHERE created < ?", (rows.ts(before),))
            return cursor.rowcount

    # -- identity-provider groups ----------------------------------------------------

    def set_login_groups(self, email: str, groups: Sequence[str], now: datetime) -> None:
        with self._write() as db:
            db.execute("DELETE FROM login_groups WHERE email = ?", (email,))
            db.execute(
                "INSERT INTO login_groups (email, groups, updated) VALUES (?, ?, ?)",
                (email, rows.json_list(sorted(groups)), rows.ts(now)),
            )

    def login_groups(self) -> dict[str, tuple[str, ...]]:
        with self._read() as db:
            found = db.execute("SELECT email, groups FROM login_groups ORDER BY email").fetchall()
        return {str(row[0]): rows.str_tuple(row[1]) for row in found}

    def last_logins(self) -> dict[str, datetime]:
        with self._read() as db:
            found = db.execute("SELECT email, updated FROM login_groups ORDER BY email").fetchall()
        return {str(row[0]): rows.dt_required(row[1]) for row in found}

    # -- people admitted at runtime ----------------------------------------------------

    def admit_runtime_user(self, email: str, now: datetime) -> tuple[RuntimeUser, bool]:
        with self._write() as db:
            row = db.execute(
                "SELECT created FROM runtime_users WHERE email = ?", (email,)
            ).fetchone()
            if row is None:
                db.execute(
                    "INSERT INTO runtime_users (email, created, last_login) VALUES (?, ?, ?)",
                    (email, rows.ts(now), rows.ts(now)),
                )
                return RuntimeUser(email, now, now), True
            db.execute(
                "UPDATE runtime_users SET last_login = ? WHERE email = ?", (rows.ts(now), email)
            )
            return RuntimeUser(email, rows.dt_required(row[0]), now), False

    def delete_runtime_user(self, email: str) -> bool:
        with self._write() as db:
            cursor = db.execute("DELETE FROM runtime_users WHERE email = ?", (email,))
            return cursor.rowcount > 0

    def runtime_users(self) -> list[RuntimeUser]:
        with self._read() as db:
            found = db.execute(
                "SELECT email, created, last_login FROM runtime_users ORDER BY email"
            ).fetchall()
        return [
            RuntimeUser(str(r[0]), rows.dt_required(r[1]), rows.dt_required(r[2])) for r in found
        ]


def _check_usable(key: PreAuthKey, now: datetime) -> None:
    if key.revoked:
        raise KeyRejected("auth key revoked")
    if key.used and not key.reusable:
        raise KeyRejected("auth key already used")
    if key.expiration is not None and now >= key.expiration:
        raise KeyRejected("auth key expired")
