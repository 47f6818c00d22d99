"""The node registry: what survives a restart, names, keys, ephemeral cleanup."""

from __future__ import annotations

import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address, IPv6Address

import pytest

from server.protocol.keys import DiscoPublic, MachinePublic, NodePublic
from server.store import (
    Conflict,
    InvalidName,
    Node,
    NotFound,
    SqlStore,
    Store,
)
from server.store.model import Registration
from server.wire import Hostinfo
from tests.unit.store_backends import Backend

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def mkey(i: int) -> MachinePublic:
    return MachinePublic(i.to_bytes(32, "big"))


def nkey(i: int) -> NodePublic:
    return NodePublic((1000 + i).to_bytes(32, "big"))


def registration(i: int, hostname: str = "laptop", **kwargs: object) -> Registration:
    """Machine `i` logging in with node key `i` (alice's, unless told)."""
    args: dict[str, object] = {"node_key": nkey(i), "user": "alice", "now": NOW} | kwargs
    return Registration(machine_key=mkey(i), hostname=hostname, **args)  # type: ignore[arg-type]


def add_node(store: Store, i: int, hostname: str = "laptop", **kwargs: object) -> Node:
    return store.create_node(registration(i, hostname, **kwargs))


def test_restart_gives_back_every_node_with_same_identity_and_addresses(backend: Backend) -> None:
    path = "state/nested/tailnetd"  # sqlite: parent dirs created
    store = backend.open(path)
    add_node(store, 1, "laptop")
    phone = add_node(store, 2, "phone", user=None, tags=("tag:mobile",), ephemeral=True)
    add_node(store, 3, "server", key_expiry=NOW + timedelta(days=180))
    store.update_from_map(
        phone.id,
        now=NOW + timedelta(minutes=1),
        disco_key=DiscoPublic(b"\x07" * 32),
        hostinfo=Hostinfo(os="iOS"),
        endpoints=("192.0.2.1:41641", "[2001:db8::1]:41641"),
        capver=130,
    )
    store.rename_node(3, "db")
    before = store.list_nodes()
    store.close()

    reopened = backend.open(path)
    assert reopened.list_nodes() == before
    assert reopened.node_by_node_key(nkey(2)) == before[1]
    assert reopened.node_by_machine_key(mkey(3)) == before[2]
    assert before[1].endpoints == ("192.0.2.1:41641", "[2001:db8::1]:41641")
    assert before[1].tags == ("tag:mobile",) and before[1].user is None
    assert before[2].given_name == "db"
    reopened.close()


def test_ids_are_never_reused_even_after_restart(backend: Backend) -> None:
    with backend.open() as store:
        for i in range(3):
            add_node(store, i, f"n{i}")
        store.delete_node(3)
    with backend.open() as store:
        assert add_node(store, 9).id == 4


def test_first_node_gets_first_addresses(store: SqlStore) -> None:
    node = add_node(store, 1)
    assert node.ipv4 == IPv4Address("100.64.0.1")
    assert node.ipv6 == IPv6Address("fd7a:115c:a1e0::1")
    assert node.disco_key.is_zero and node.last_seen is None and node.created == NOW


def test_given_names_are_unique_dns_labels(store: SqlStore) -> None:
    names = [add_node(store, i, "laptop").given_name for i in range(3)]
    assert names == ["laptop", "laptop-1", "laptop-2"]
    assert add_node(store, 10, "Alice's MacBook Pro.local").given_name == "alice-s-macbook-pro"
    assert add_node(store, 11, "").given_name == "node"
    assert add_node(store, 12, "日本").given_name == "node-1"
    long = "x" * 80
    assert add_node(store, 13, long).given_name == "x" * 63
    assert add_node(store, 14, long).given_name == "x" * 61 + "-1"
    assert add_node(store, 15, "Laptop").hostname == "Laptop"  # reported name is kept


def test_rename_validates_and_keeps_names_unique(store: SqlStore) -> None:
    laptop, phone = add_node(store, 1, "laptop"), add_node(store, 2, "phone")
    assert store.rename_node(laptop.id, "Work-Laptop").given_name == "work-laptop"
    with pytest.raises(Conflict, match="'work-laptop' is already used by node 1"):
        store.rename_node(phone.id, "work-laptop")
    for bad in ("", "-x", "x-", "a_b", "a.b", "a" * 64):
        with pytest.raises(InvalidName, match="not a valid node name"):
            store.rename_node(phone.id, bad)
    # the old name is free again
    assert add_node(store, 3, "laptop").given_name == "laptop"
    with pytest.raises(NotFound):
        store.rename_node(99, "ghost")


def test_a_machine_has_one_node_and_node_keys_are_unique(store: SqlStore) -> None:
    add_node(store, 1)
    with pytest.raises(Conflict, match="already registered as node 1"):
        store.create_node(replace(registration(1), node_key=nkey(5)))
    with pytest.raises(Conflict, match="already used by node 1"):
        store.create_node(replace(registration(1), machine_key=mkey(5)))
    assert len(store.list_nodes()) == 1


def test_node_key_rotation(store: SqlStore) -> None:
    node, other = add_node(store, 1), add_node(store, 2)
    later = NOW + timedelta(hours=1)
    rotated = store.update_node_key(node.id, nkey(50), later)
    assert rotated.node_key == nkey(50) and rotated.last_seen == later
    assert rotated.ipv4 == node.ipv4 and rotated.given_name == node.given_name
    assert store.node_by_node_key(nkey(1)) is None
    assert store.node_by_node_key(nkey(50)) == rotated
    with pytest.raises(Conflict):
        store.update_node_key(node.id, other.node_key, later)
    assert store.update_node_key(node.id, nkey(50), later) == rotated  # same key: no-op
    with pytest.raises(NotFound, match="node 99 not found"):
        store.update_node_key(99, nkey(77), later)


def test_update_from_map_changes_only_given_fields(store: SqlStore) -> None:
    node = add_node(store, 1, endpoints=("192.0.2.1:1",), capver=100, hostinfo=Hostinfo(os="a"))
    t1 = NOW + timedelta(seconds=30)
    updated = store.update_from_map(node.id, now=t1, capver=120)
    assert updated.capver == 120 and updated.last_seen == t1
    assert updated.endpoints == ("192.0.2.1:1",) and updated.hostinfo == Hostinfo(os="a")
    emptied = store.update_from_map(node.id, now=t1, endpoints=(), hostname="renamed")
    assert emptied.endpoints == () and emptied.hostname == "renamed"
    assert emptied.given_name == "laptop"  # the DNS name does not follow the hostname


def test_last_seen_and_key_expiry(store: SqlStore) -> None:
    node = add_node(store, 1)
    store.touch_last_seen(node.id, NOW + timedelta(minutes=5))
    expiry = NOW + timedelta(days=90)
    assert store.set_key_expiry(node.id, expiry).key_expiry == expiry
    fetched = store.get_node(node.id)
    assert fetched is not None and fetched.last_seen == NOW + timedelta(minutes=5)
    assert store.set_key_expiry(node.id, None).key_expiry is None
    with pytest.raises(NotFound):
        store.touch_last_seen(42, NOW)
    assert store.get_node(42) is None


def test_times_come_back_in_utc_and_naive_times_are_refused(store: SqlStore) -> None:
    plus2 = datetime(2025, 3, 1, 14, 0, tzinfo=UTC).astimezone()  # any zone
    node = add_node(store, 1, now=plus2)
    assert node.created == plus2 and node.created.utcoffset() == timedelta(0)
    with pytest.raises(ValueError, match="timezone-aware"):
        add_node(store, 2, now=datetime(2025, 1, 1))


def test_generation_grows_with_every_write_only(store: SqlStore) -> None:
    g0 = store.generation
    node = add_node(store, 1)
    g1 = store.generation
    store.touch_last_seen(node.id, NOW)
    g2 = store.generation
    store.list_nodes()
    store.get_node(node.id)
    assert g0 < g1 < g2 == store.generation
    with pytest.raises(NotFound):
        store.delete_node(99)
    assert store.generation == g2  # a failed write changed nothing


def test_ephemeral_nodes_inactive_since_cutoff_are_removed(store: SqlStore) -> None:
    idle = add_node(store, 1, "idle", ephemeral=True)
    store.touch_last_seen(idle.id, NOW + timedelta(minutes=1))
    active = add_node(store, 2, "active", ephemeral=True)
    store.touch_last_seen(active.id, NOW + timedelta(minutes=20))
    never_seen = add_node(store, 3, "ci-runner", ephemeral=True)
    durable = add_node(store, 4, "server")

    cutoff = NOW + timedelta(minutes=10)
    gone = store.delete_ephemeral_inactive(cutoff)
    assert [n.id for n in gone] == [idle.id, never_seen.id]
    assert [n.id for n in store.list_nodes()] == [active.id, durable.id]
    assert store.delete_ephemeral_inactive(cutoff) == []
    # a deleted node's address goes back to the pool
    assert add_node(store, 5).ipv4 == idle.ipv4


def test_delete_node_returns_it_and_frees_key_and_name(store: SqlStore) -> None:
    node = add_node(store, 1)
    assert store.delete_node(node.id) == node
    assert store.node_by_machine_key(mkey(1)) is None
    again = add_node(store, 1)
    assert again.given_name == "laptop" and again.id != node.id


def test_pending_logins(store: SqlStore) -> None:
    rng = iter(range(10_000))

    def counter(n: int) -> bytes:
        return bytes(next(rng) % 256 for _ in range(n))

    a = store.create_pending_login(mkey(1), nkey(1), False, NOW, counter)
    b = store.create_pending_login(mkey(2), nkey(2), True, NOW + timedelta(minutes=5), counter)
    assert a != b and len(a) == 32
    login = store.get_pending_login(b)
    assert login is not None and login.machine_key == mkey(2) and login.ephemeral
    assert store.delete_pending_logins_before(NOW + timedelta(minutes=1)) == 1
    assert store.get_pending_login(a) is None
    assert store.delete_pending_login(b) is True
    assert store.delete_pending_login(b) is False


def test_two_handles_on_one_file_never_hand_out_the_same_address(backend: Backend) -> None:
    # The server and an admin command may both have the file open.
    with backend.open() as server, backend.open() as admin:
        nodes = [add_node(server if i % 2 else admin, i, "box") for i in range(10)]
    assert len({n.ipv4 for n in nodes}) == len({n.ipv6 for n in nodes}) == 10
    assert len({n.given_name for n in nodes}) == 10


def test_concurrent_writers_in_threads_stay_consistent(backend: Backend) -> None:
    backend.open().close()
    errors: list[BaseException] = []

    def register(worker: int) -> None:
        try:
            with backend.open() as store:
                for j in range(10):
                    add_node(store, worker * 100 + j, "worker")
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=register, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with backend.open() as store:
        nodes = store.list_nodes()
    assert len(nodes) == 40
    assert len({n.ipv4 for n in nodes}) == len({n.given_name for n in nodes}) == 40
