"""Replicas on one PostgreSQL: a node change made through one reaches the
other's registry as the same change, online state is the union of every
replica's streams, and a replica that dies takes its streams with it."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from server.protocol.keys import MachinePublic, NodePublic
from server.store import SqlStore
from server.store.model import Registration
from server.store.postgres import PostgresStore
from server.tailnet import NodeChange, NodeRegistry
from server.tailnet.pg_listen import listen_for_replicas
from server.tailnet.replicas import (
    DEAD_AFTER,
    MAX_NOTICE,
    Notice,
    NoticeError,
    Replicas,
    decode_notice,
    encode_notice,
)
from tests.pgserver import PgServer
from tests.unit.control_client import T0, async_test
from tests.unit.store_backends import PostgresBackend

LOG = logging.getLogger("test")


def key(n: int) -> bytes:
    return n.to_bytes(32, "big")


def register(registry: NodeRegistry, n: int) -> int:
    return registry.register(
        Registration(
            machine_key=MachinePublic(key(n)),
            node_key=NodePublic(key(n)),
            hostname=f"n{n}",
            user="alice",
            now=T0,
        )
    ).id


class Side:
    """One replica: its registry, what it published, and its Replicas."""

    def __init__(self, name: str, store: SqlStore, send: Any) -> None:
        self.registry = NodeRegistry(store, log=LOG)
        self.seen: list[NodeChange] = []
        self.records: dict[int, Any] = {}
        self.registry.subscribe(self.seen.append)
        self.registry.subscribe(self._record)
        self.replicas = Replicas(
            name,
            self.registry,
            send,
            known=self.records.get,
            known_ids=lambda: frozenset(self.records),
            log=LOG,
        )

    def _record(self, change: NodeChange) -> None:
        if change.node is None:
            self.records.pop(change.node_id, None)
        else:
            self.records[change.node_id] = change.node


class Bus:
    """NOTIFY in memory: every side receives every notice (its own too)."""

    def __init__(self) -> None:
        self.sides: list[Side] = []
        self.now = 0.0

    def send(self, text: str) -> None:
        for side in self.sides:
            side.replicas.receive(text, self.now)


@pytest.fixture
def pair(tmp_path: Any) -> Iterator[tuple[Side, Side]]:
    from server.store import open_store

    store = open_store(tmp_path / "shared.db")
    bus = Bus()
    a, b = Side("a", store, bus.send), Side("b", store, bus.send)
    bus.sides += [a, b]
    yield a, b
    store.close()


def kinds(side: Side) -> list[tuple[str, bool | None]]:
    return [(c.kind, c.online) for c in side.seen]


def test_every_change_made_on_one_replica_is_published_on_the_other(
    pair: tuple[Side, Side],
) -> None:
    a, b = pair
    node_id = register(a.registry, 1)
    node = a.registry.get(node_id)
    assert node is not None
    a.registry.update_from_map(node, now=T0, endpoints=("192.0.2.1:41641",))
    a.registry.connected(node_id)
    a.registry.rename(node_id, "renamed")
    a.registry.set_tags(node_id, ["tag:server"])
    a.registry.set_key_expiry(node_id, T0)
    a.registry.disconnected(node_id, T0 + timedelta(minutes=1))
    a.registry.remove(node_id)

    # The same kinds, in the same order, with the same records.
    assert [c.kind for c in b.seen] == [c.kind for c in a.seen]
    assert [c.online for c in b.seen] == [c.online for c in a.seen]
    assert b.seen[3].node is not None and b.seen[3].node.given_name == "renamed"
    assert b.seen[3].previous is not None and b.seen[3].previous.given_name != "renamed"
    assert b.seen[-1].previous is not None and b.seen[-1].node is None
    assert b.registry.online_ids() == frozenset()


def test_a_node_is_online_while_any_replica_streams_it(pair: tuple[Side, Side]) -> None:
    a, b = pair
    node_id = register(a.registry, 1)
    a.registry.connected(node_id)
    b.registry.connected(node_id)  # the client moved: a second stream on b
    assert a.registry.is_online(node_id) and b.registry.is_online(node_id)
    a.registry.disconnected(node_id, T0)
    assert a.registry.is_online(node_id) and b.registry.is_online(node_id)
    assert [c.online for c in a.seen if c.online is not None] == [True]
    assert [c.online for c in b.seen if c.online is not None] == [True]
    b.registry.disconnected(node_id, T0)
    assert not a.registry.is_online(node_id) and not b.registry.is_online(node_id)
    assert [c.online for c in a.seen if c.online is not None] == [True, False]


def test_a_silent_replica_is_dead_and_its_nodes_go_offline() -> None:
    from server.store import open_store

    store = open_store(":memory:")  # type: ignore[arg-type]
    sent: list[str] = []
    b = Side("b", store, sent.append)
    node_id = register(b.registry, 1)
    b.replicas.receive(encode_notice(Notice("a", node_id, "volatile", True)), 0.0)
    assert b.registry.is_online(node_id) and b.seen[-1].online is True
    b.replicas.handle_timer(DEAD_AFTER - 1)
    assert b.registry.is_online(node_id)
    b.replicas.handle_timer(DEAD_AFTER + 1)
    assert not b.registry.is_online(node_id)
    assert [c.online for c in b.seen if c.online is not None] == [True, False]
    assert any('"hello":true' in text for text in sent)  # and it asks who streams what
    assert b.replicas.alive() == frozenset()
    assert any('"beat":true' in text for text in sent)
    store.close()


def test_a_new_replica_learns_what_streams_elsewhere(pair: tuple[Side, Side]) -> None:
    a, b = pair
    ids = [register(a.registry, n) for n in range(1, 1500)]
    for node_id in ids:
        a.registry.connected(node_id)
    b.registry.replica_gone("a")  # as if b had just started
    assert b.registry.online_ids() == frozenset()
    b.replicas.hello()  # answered in chunks under the payload limit
    assert b.registry.online_ids() == frozenset(ids)


def test_lookups_from_memory_follow_the_other_replicas_writes(pair: tuple[Side, Side]) -> None:
    """Each registry answers lookups from memory; another replica's write
    reaches that memory through the same stream its subscribers follow."""
    a, b = pair
    node_id = register(a.registry, 1)
    assert b.registry.get(node_id) is not None  # b holds it in memory from now on
    a.registry.rename(node_id, "renamed")
    node = a.registry.get(node_id)
    assert node is not None
    a.registry.renew_key(node, NodePublic(key(9)), T0)
    seen = b.registry.by_node_key(NodePublic(key(9)))
    assert seen is not None and (seen.id, seen.given_name) == (node_id, "renamed")
    assert b.registry.by_node_key(NodePublic(key(1))) is None  # the old key is gone
    a.registry.remove(node_id)
    assert b.registry.get(node_id) is None
    assert b.registry.by_machine_key(MachinePublic(key(1))) is None


def test_resync_reads_back_what_was_missed(pair: tuple[Side, Side]) -> None:
    a, b = pair
    kept, gone = register(a.registry, 1), register(a.registry, 2)
    b.replicas._send = lambda text: None  # b hears nothing from now on ...
    a.replicas._send = lambda text: None
    a.registry.remove(gone)
    a.registry.rename(kept, "missed")
    b.seen.clear()
    b.replicas.resync()  # ... until it listens again
    assert ("removed", gone) in [(c.kind, c.node_id) for c in b.seen]
    renamed = [c.node for c in b.seen if c.node_id == kept]
    assert renamed and renamed[-1] is not None and renamed[-1].given_name == "missed"


def test_notices_are_bounded_and_checked() -> None:
    notice = Notice("a", 7, "topology", True)
    assert decode_notice(encode_notice(notice)) == notice
    assert decode_notice(encode_notice(Notice("a", beat=True))).beat
    for bad in ("{", "[]", '{"replica":1}', '{"replica":"a","node":"7","kind":"topology"}',
                '{"replica":"a","node":7,"kind":"gone"}', "x" * (MAX_NOTICE + 1)):  # fmt: skip
        with pytest.raises(NoticeError):
            decode_notice(bad)
    with pytest.raises(ValueError):
        encode_notice(Notice("a", streaming=tuple(range(10**9, 10**9 + 2000))))


# On the test PostgreSQL: two store handles, two LISTEN connections.


@pytest.fixture
def database(pg_server: PgServer) -> Iterator[str]:
    backend = PostgresBackend(pg_server)
    yield backend.where()
    backend.cleanup()


async def _until(check: Any, seconds: float = 1.0) -> float:
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > seconds:
            raise AssertionError(f"not within {seconds:.1f} s")
        await asyncio.sleep(0.01)
    return time.monotonic() - start


async def _stop(tasks: list[asyncio.Task[None]], stores: list[Any]) -> None:
    """Stop the LISTEN tasks, then close the stores."""
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for store in stores:
        store.close()


@async_test
async def test_two_replicas_on_postgres_see_each_others_changes_within_a_second(
    database: str,
) -> None:
    from server.store import open_store

    stores = [open_store(database), open_store(database)]
    assert all(isinstance(s, PostgresStore) for s in stores)
    sides = [
        Side(name, s, lambda text, s=s: s.notify("tailnetd_nodes", text))  # type: ignore[misc]
        for name, s in zip("ab", stores, strict=True)
    ]
    tasks = [
        asyncio.create_task(
            listen_for_replicas(
                database,
                side.replicas,
                clock=time.monotonic,
                log=LOG,
            )
        )
        for side in sides
    ]
    a, b = sides
    try:
        await _until(lambda: "a" in b.replicas.alive() and "b" in a.replicas.alive(), 3)
        node_id = register(a.registry, 1)
        await _until(lambda: b.registry.get(node_id) is not None and len(b.seen) == 1)
        assert b.seen[0].kind == "topology" and b.seen[0].node == a.registry.get(node_id)
        a.registry.connected(node_id)
        await _until(lambda: b.registry.is_online(node_id))
        a.registry.remove(node_id)
        await _until(lambda: b.seen[-1].kind == "removed")
        assert not b.registry.is_online(node_id)
    finally:
        await _stop(tasks, stores)
