"""Node rows in SQL both backends run: registration, lookups, updates, deletion.

A mixin of `SqlStore`. Registration reads the used addresses and names from
the in-memory index (`_nodeindex`) instead of every row, so it costs
O(log n), not O(n); the index is checked against the database inside each
of those transactions.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from server.protocol.keys import DiscoPublic, MachinePublic, NodePublic
from server.store import _rows as rows
from server.store._credentials import consume_preauth_key
from server.store._db import Db, SqlBackend
from server.store._nodeindex import NodeIndex
from server.store.ipalloc import allocate_ipv4, allocate_ipv6
from server.store.model import AllocationStrategy, Conflict, Node, NotFound, Registration, Rng
from server.store.names import check_label, label_from_hostname
from server.wire import Hostinfo

__all__ = ["NodeTables"]


class NodeTables(SqlBackend):
    _rng: Rng  # random address allocation only
    _index: NodeIndex | None

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
                consume_preauth_key(db, reg.auth_key_id, reg.now, self._FOR_UPDATE)
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
                consume_preauth_key(db, reg.auth_key_id, reg.now, self._FOR_UPDATE)
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
