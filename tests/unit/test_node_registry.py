"""The node registry is the only writer of node state: every write emits
one classified change, and the running tailnet follows those changes alone."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from gitctl.snapshot import ALLOW_ALL
from server.protocol.keys import DiscoPublic, MachinePublic, NodePublic
from server.store import open_store
from server.store.interface import Store
from server.store.model import Registration
from server.tailnet import NodeChange, NodeRegistry, TailnetSource, running_tailnet
from server.tailnet.mapper import build_map
from server.tailnet.registry import classify
from server.wire import DerpRegion, Hostinfo, decode
from tests.unit.control_client import T0

ROUTER_INFO = {"RoutableIPs": ["10.1.0.0/24"]}
ROUTER = decode(Hostinfo, ROUTER_INFO)

USERS = {"alice": ("alice@example.com", "Alice"), "bob": ("bob@example.com", "Bob")}
SOURCE = TailnetSource(
    id="a", domain="tailnet.example", dns_config={}, users=USERS, policy=ALLOW_ALL
)
REGIONS = [DerpRegion(999, "test", "test", "127.0.0.1", 3340, 0)]


@pytest.fixture
def store() -> Iterator[Store]:
    s = open_store(Path(":memory:"))
    yield s
    s.close()


def recording(store: Store) -> tuple[NodeRegistry, list[NodeChange]]:
    registry = NodeRegistry(store, log=logging.getLogger("test"))
    seen: list[NodeChange] = []
    registry.subscribe(seen.append)
    return registry, seen


def key(n: int) -> bytes:
    return n.to_bytes(32, "big")


def register(registry: NodeRegistry, n: int, user: str | None = "alice", **kw: object) -> int:
    return registry.register(
        Registration(
            machine_key=MachinePublic(key(n)),
            node_key=NodePublic(key(n)),
            hostname=f"n{n}",
            user=user,
            now=T0,
            **kw,  # type: ignore[arg-type]
        )
    ).id


def test_every_write_emits_one_change_classified_once(store: Store) -> None:
    registry, seen = recording(store)
    node_id = register(registry, 1)
    node = registry.get(node_id)
    assert node is not None
    registry.update_from_map(node, now=T0, endpoints=("192.0.2.1:41641",))
    node = registry.get(node_id)
    assert node is not None
    registry.update_from_map(node, now=T0, hostinfo=ROUTER)
    registry.connected(node_id)
    registry.connected(node_id)  # a second stream: no second "online"
    registry.disconnected(node_id, T0 + timedelta(minutes=1))
    registry.disconnected(node_id, T0 + timedelta(minutes=2))
    registry.rename(node_id, "renamed")
    registry.set_key_expiry(node_id, T0)
    node = registry.get(node_id)
    assert node is not None
    registry.renew_key(node, NodePublic(key(99)), T0)
    registry.remove(node_id)

    assert [(c.kind, c.online) for c in seen] == [
        ("topology", None),  # joined
        ("volatile", None),  # endpoints
        ("topology", None),  # advertised routes
        ("volatile", True),
        ("volatile", False),
        ("topology", None),  # renamed
        ("volatile", None),  # expired: peers see KeyExpiry, nothing recompiles
        ("topology", None),  # new node key
        ("removed", None),
    ]
    offline = seen[4]
    assert offline.node is not None and offline.node.last_seen == T0 + timedelta(minutes=2)
    assert seen[-1].node is None and seen[-1].previous is not None
    assert all(c.node_id == node_id for c in seen)


def test_lookups_from_memory_equal_the_store_after_every_write(store: Store) -> None:
    """The registry answers lookups from memory kept by its own changes: after
    each write it says what a fresh read of the store says."""
    registry, seen = recording(store)
    node_id = register(registry, 1)

    def same() -> None:
        stored = store.get_node(node_id)
        assert registry.get(node_id) == stored
        if stored is not None:
            assert registry.by_node_key(stored.node_key) == stored
            assert registry.by_machine_key(stored.machine_key) == stored
        assert seen[-1].node == stored

    same()
    node = registry.get(node_id)
    assert node is not None
    registry.update_from_map(node, now=T0, endpoints=("192.0.2.1:41641",), hostinfo=ROUTER)
    same()
    registry.connected(node_id)
    registry.disconnected(node_id, T0 + timedelta(minutes=1, microseconds=7))
    same()  # last seen, without reading it back
    registry.rename(node_id, "renamed")
    registry.set_tags(node_id, ["tag:server"])
    registry.set_key_expiry(node_id, T0)
    same()
    node = registry.get(node_id)
    assert node is not None
    registry.renew_key(node, NodePublic(key(99)), T0)
    same()
    assert registry.by_node_key(NodePublic(key(1))) is None  # the old key is forgotten
    registry.remove(node_id)
    same()
    assert registry.by_machine_key(MachinePublic(key(1))) is None


def test_classify_reads_what_the_compiler_sees(store: Store) -> None:
    registry, _ = recording(store)
    node = registry.get(register(registry, 1))
    assert node is not None
    assert classify(None, node) == "topology"
    assert classify(node, None) == "removed"
    assert classify(node, replace(node, disco_key=DiscoPublic(key(5)))) == "volatile"
    assert classify(node, replace(node, tags=("tag:x",))) == "topology"
    # A posture fact (OS, versions) is read by the compiler: postures must see it.
    assert classify(node, replace(node, hostinfo=Hostinfo(os="linux"))) == "topology"
    assert classify(node, replace(node, hostinfo=Hostinfo(hostname="other"))) == "volatile"
    router = replace(node, hostinfo=ROUTER)
    assert classify(node, router) == "topology"  # advertised routes: the compiler sees them
    moved = replace(router, hostinfo=decode(Hostinfo, {**ROUTER_INFO, "Hostname": "r2"}))
    assert classify(router, moved) == "volatile"  # same routes and posture, other Hostinfo


def test_a_user_removed_from_git_is_cut_off_and_named(store: Store) -> None:
    registry, tailnet = running_tailnet(
        store, SOURCE, derp_regions=REGIONS, log=logging.getLogger("test"), clock=lambda: T0
    )
    alice, bob = register(registry, 1, "alice"), register(registry, 2, "bob")
    handle = tailnet.open_session(bob)
    before = build_map(tailnet.context, alice, T0)
    assert before is not None and bob in before.peers

    tailnet.swap_source(replace(SOURCE, id="b", users={"alice": USERS["alice"]}))

    after = build_map(tailnet.context, alice, T0)
    assert after is not None and bob not in after.peers
    assert build_map(tailnet.context, bob, T0) is None
    assert handle.closed  # its stream ends at once
    assert [n.id for n in tailnet.cut_off()] == [bob]
    assert not tailnet.serves(bob)

    tailnet.swap_source(SOURCE)  # the user is back in git: served again
    assert tailnet.cut_off() == [] and tailnet.serves(bob)


def test_a_fresh_start_from_the_store_equals_the_event_fed_tailnet(store: Store) -> None:
    registry, tailnet = running_tailnet(
        store, SOURCE, derp_regions=REGIONS, log=logging.getLogger("test"), clock=lambda: T0
    )
    ids = [register(registry, n, "alice" if n % 2 else "bob") for n in range(1, 6)]
    registry.rename(ids[0], "first")
    registry.remove(ids[1])
    node = registry.get(ids[2])
    assert node is not None
    registry.update_from_map(node, now=T0, disco_key=DiscoPublic(key(77)))
    _, fresh = running_tailnet(
        store, SOURCE, derp_regions=REGIONS, log=logging.getLogger("t"), clock=lambda: T0
    )
    assert tailnet.context.nodes == fresh.context.nodes
    for node_id in tailnet.context.nodes:
        assert build_map(tailnet.context, node_id, T0) == build_map(fresh.context, node_id, T0)


def router_source() -> TailnetSource:
    """Both routers serve 10.1.0.0/24 (approved for their tag in git)."""
    return replace(SOURCE, explicit_routes={"tag:router": ("10.1.0.0/24",)})


def ha_routers(store: Store) -> tuple[NodeRegistry, Callable[[], int], int, int]:
    """Two routers for 10.1.0.0/24 and a viewer, all streaming; `primary()`
    is the router the viewer is told serves the subnet."""
    registry, tailnet = running_tailnet(
        store, router_source(), derp_regions=REGIONS, log=logging.getLogger("t"), clock=lambda: T0
    )
    first = register(registry, 1, None, tags=("tag:router",), hostinfo=ROUTER)
    second = register(registry, 2, None, tags=("tag:router",), hostinfo=ROUTER)
    viewer = register(registry, 3, "alice")
    for node_id in (first, second, viewer):
        tailnet.open_session(node_id)
        registry.connected(node_id)

    def primary() -> int:
        state = build_map(tailnet.context, viewer, T0)
        assert state is not None
        peers = {pid: json.loads(state.peers[pid]) for pid in (first, second)}
        owners = [pid for pid, p in peers.items() if "10.1.0.0/24" in p.get("PrimaryRoutes", [])]
        for pid, p in peers.items():  # AllowedIPs follow: only the primary routes the subnet
            assert ("10.1.0.0/24" in p["AllowedIPs"]) == (pid in owners)
        assert len(owners) == 1, "exactly one router serves the subnet to its peers"
        return owners[0]

    return registry, primary, first, second


def test_an_offline_primary_router_fails_over_and_nothing_flaps(store: Store) -> None:
    registry, primary, first, second = ha_routers(store)
    assert primary() == first  # the earliest registered
    registry.disconnected(first, T0)
    assert primary() == second  # failover, without a commit
    registry.connected(first)
    assert primary() == second  # the old primary's return does not take the subnet back
    registry.disconnected(second, T0)
    assert primary() == first  # and fails over back when its successor goes
    registry.disconnected(first, T0)
    assert primary() == first  # nobody online: the last primary stays listed
