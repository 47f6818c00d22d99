"""Router health shared between replicas: the replica a router streams to
probes it (server/tailnet/probes.py) and every other replica holds its
verdict too, so all of them elect the same primary for a shared subnet — also
a replica that starts later, and none keeps a verdict of a replica that died."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest

from server.store import SqlStore, open_store
from server.store.interface import Store
from server.tailnet import NodeRegistry, Tailnet, running_tailnet
from server.tailnet.mapper import build_map
from server.tailnet.pg_listen import listen_for_replicas, replicas_of
from server.tailnet.probes import RouterProbes
from server.tailnet.replicas import (
    CHANNEL,
    DEAD_AFTER,
    Notice,
    NoticeError,
    decode_notice,
    encode_notice,
)
from server.tailnet.timers import Probing
from tests.unit.control_client import T0, async_test
from tests.unit.test_node_registry import REGIONS, ROUTER, register, router_source
from tests.unit.test_replicas import _stop, _until, database  # noqa: F401 (a fixture)

LOG = logging.getLogger("test")
SUBNET = "10.1.0.0/24"


class Replica:
    """A registry, the tailnet following it, and its Replicas, wired as
    `server.tailnet.pg_listen.start_replication` wires them."""

    def __init__(self, name: str, store: Store, send: Callable[[str], None]) -> None:
        self.registry: NodeRegistry
        self.tailnet: Tailnet
        self.registry, self.tailnet = running_tailnet(
            store, router_source(), derp_regions=REGIONS, log=LOG, clock=lambda: T0
        )
        self.replicas = replicas_of(name, self.registry, self.tailnet, send, log=LOG)

    def primary(self, viewer: int) -> int | None:
        """The router `viewer`'s map names as serving the subnet (None: none)."""
        state = build_map(self.tailnet.context, viewer, T0)
        assert state is not None
        owners = [
            pid
            for pid, text in state.peers.items()
            if SUBNET in json.loads(text).get("PrimaryRoutes", [])
        ]
        assert len(owners) <= 1
        return owners[0] if owners else None


class Bus:
    """NOTIFY in memory: every replica receives every notice (its own too)."""

    def __init__(self) -> None:
        self.replicas: list[Replica] = []
        self.now = 0.0

    def send(self, text: str) -> None:
        for replica in list(self.replicas):
            replica.replicas.receive(text, self.now)

    def join(self, name: str, store: Store) -> Replica:
        replica = Replica(name, store, self.send)
        self.replicas.append(replica)
        return replica


@pytest.fixture
def store() -> Iterator[Store]:
    s = open_store(":memory:")  # type: ignore[arg-type]
    yield s
    s.close()


def routers(a: Replica, b: Replica) -> tuple[int, int, int]:
    """Router `first` streams to replica a, `second` to b, a viewer to a."""
    first = register(a.registry, 1, None, tags=("tag:router",), hostinfo=ROUTER)
    second = register(a.registry, 2, None, tags=("tag:router",), hostinfo=ROUTER)
    viewer = register(a.registry, 3, "alice")
    a.registry.connected(first)
    b.registry.connected(second)
    a.registry.connected(viewer)
    return first, second, viewer


def test_a_router_failing_probes_on_its_replica_fails_over_on_every_replica(
    store: Store,
) -> None:
    bus = Bus()
    a, b = bus.join("a", store), bus.join("b", store)
    first, second, viewer = routers(a, b)
    assert a.primary(viewer) == b.primary(viewer) == first
    assert a.tailnet.shared_routers() == b.tailnet.shared_routers() == {first, second}

    a.registry.set_healthy(first, False)  # a's probes: its stream stays open
    assert a.registry.is_online(first) and b.registry.is_online(first)
    assert a.primary(viewer) == b.primary(viewer) == second

    a.registry.set_healthy(first, True)  # answers again: the new primary keeps it
    assert a.primary(viewer) == b.primary(viewer) == second
    b.registry.set_healthy(second, False)  # now b's router fails b's probes
    assert a.primary(viewer) == b.primary(viewer) == first


def test_replicas_that_saw_routers_in_another_order_take_the_leaders_primary(
    store: Store,
) -> None:
    bus = Bus()
    a, b = bus.join("a", store), bus.join("b", store)
    first = register(a.registry, 1, None, tags=("tag:router",), hostinfo=ROUTER)
    second = register(a.registry, 2, None, tags=("tag:router",), hostinfo=ROUTER)
    viewer = register(a.registry, 3, "alice")
    a.registry.connected(viewer)
    bus.replicas = [b]  # a hears nothing for a while ...
    b.registry.connected(second)  # ... so b elects its own router, online first for b
    bus.replicas = [a, b]
    a.registry.connected(first)  # and a elects its own, online first for a
    a.replicas.resync()  # a listens again: both routers online for both
    assert a.registry.online_ids() == b.registry.online_ids() == {first, second, viewer}
    assert (a.primary(viewer), b.primary(viewer)) == (first, second)  # each keeps its own

    bus.now = 2.0
    b.replicas.handle_timer(bus.now)  # b's heartbeat: b is not the leader
    assert b.primary(viewer) == second
    a.replicas.handle_timer(bus.now)  # the leader's heartbeat names its primaries
    assert a.primary(viewer) == b.primary(viewer) == first
    a.registry.set_healthy(first, False)  # and health still moves both
    assert a.primary(viewer) == b.primary(viewer) == second
    b.registry.set_healthy(second, False)
    a.registry.set_healthy(first, True)
    assert a.primary(viewer) == b.primary(viewer) == first


def test_a_replica_starting_later_learns_the_health_verdicts(store: Store) -> None:
    bus = Bus()
    a, b = bus.join("a", store), bus.join("b", store)
    first, second, viewer = routers(a, b)
    a.registry.set_healthy(first, False)
    assert b.primary(viewer) == second

    c = bus.join("c", store)  # starts now: it reads the nodes, then asks who holds what
    c.replicas.resync()
    assert c.registry.online_ids() == {first, second, viewer}
    assert c.primary(viewer) == second

    a.registry.set_healthy(first, True)
    b.registry.set_healthy(second, False)
    assert a.primary(viewer) == b.primary(viewer) == c.primary(viewer) == first


def test_an_answer_to_hello_changes_nothing_already_known(store: Store) -> None:
    bus = Bus()
    a, b = bus.join("a", store), bus.join("b", store)
    first, _, _ = routers(a, b)
    a.registry.set_healthy(first, False)
    seen: list[bool] = []
    b.registry.subscribe(lambda c: seen.append(c.healthy) if c.healthy is not None else None)
    b.replicas.hello()  # a answers: streaming, then what it holds unhealthy
    assert seen == []  # no flap of the verdict while it is restated


def test_the_verdicts_of_a_replica_that_died_are_dropped(store: Store) -> None:
    sent: list[str] = []
    b = Replica("b", store, sent.append)
    first = register(b.registry, 1, None, tags=("tag:router",), hostinfo=ROUTER)
    second = register(b.registry, 2, None, tags=("tag:router",), hostinfo=ROUTER)
    viewer = register(b.registry, 3, "alice")
    b.registry.connected(second)
    b.registry.connected(viewer)
    b.replicas.receive(encode_notice(Notice("a", first, "volatile", True)), 0.0)
    b.replicas.receive(encode_notice(Notice("a", first, "volatile", healthy=False)), 0.0)
    assert b.primary(viewer) == second

    b.replicas.handle_timer(DEAD_AFTER + 1)  # a went silent: first is offline
    assert not b.registry.is_online(first)
    b.registry.connected(first)  # the router comes back through b ...
    b.registry.set_healthy(second, False)  # ... and b's own router fails b's probes
    assert b.primary(viewer) == first  # not held unhealthy for a dead replica
    assert any('"healthy":false' in text for text in sent)  # b's own verdict went out


def test_a_removed_router_is_not_restated_as_unhealthy(store: Store) -> None:
    bus = Bus()
    a, b = bus.join("a", store), bus.join("b", store)
    first, second, _ = routers(a, b)
    a.registry.set_healthy(first, False)
    b.registry.remove(first)  # deleted through the other replica
    sent: list[str] = []
    a.replicas._send = sent.append
    a.replicas.receive(encode_notice(Notice("b", hello=True)), 0.0)
    assert '{"replica":"a","unhealthy":[]}' in sent


def test_only_this_replicas_own_verdicts_go_out(store: Store) -> None:
    sent: list[str] = []
    b = Replica("b", store, sent.append)
    first = register(b.registry, 1, None, tags=("tag:router",), hostinfo=ROUTER)
    b.replicas.receive(encode_notice(Notice("a", first, "volatile", healthy=False)), 0.0)
    b.replicas.receive(encode_notice(Notice("a", unhealthy=())), 0.0)  # a restates: none
    assert not [t for t in sent if "healthy" in t]  # nothing echoed as b's verdict


def test_health_notices_are_checked() -> None:
    for notice in (
        Notice("a", 7, "volatile", healthy=False),
        Notice("a", unhealthy=(7, 9)),
        Notice("a", beat=True, primaries={"10.1.0.0/24": 7}),
    ):
        assert decode_notice(encode_notice(notice)) == notice
    for bad in ('{"replica":"a","healthy":false}', '{"replica":"a","unhealthy":[1,"2"]}',
                '{"replica":"a","node":7,"kind":"volatile","healthy":"no"}',
                '{"replica":"a","beat":true,"primaries":{"10.1.0.0/24":"7"}}'):  # fmt: skip
        with pytest.raises(NoticeError):
            decode_notice(bad)


# On the test PostgreSQL: two store handles, two LISTEN connections.


@async_test
async def test_on_postgres_both_replicas_elect_the_same_primary_within_a_second(
    database: str,  # noqa: F811 (the fixture of test_replicas)
) -> None:
    stores = [open_store(database), open_store(database)]
    assert all(isinstance(s, SqlStore) for s in stores)
    sides = [
        Replica(name, s, lambda text, s=s: s.notify(CHANNEL, text))  # type: ignore[attr-defined,misc]
        for name, s in zip("ab", stores, strict=True)
    ]
    tasks = [
        asyncio.create_task(
            listen_for_replicas(database, side.replicas, clock=time.monotonic, log=LOG)
        )
        for side in sides
    ]
    a, b = sides
    try:
        await _until(lambda: "a" in b.replicas.alive() and "b" in a.replicas.alive(), 3)
        # b learns of its own router before a's: it elects it at first, then
        # takes the leader's (a's) choice from a heartbeat.
        first, second, viewer = routers(a, b)
        both = {first, second, viewer}
        await _until(lambda: a.registry.online_ids() == b.registry.online_ids() == both)
        await _until(lambda: a.primary(viewer) == b.primary(viewer) == first, 2.5)

        a.registry.set_healthy(first, False)
        await _until(lambda: a.primary(viewer) == b.primary(viewer) == second)
        a.registry.set_healthy(first, True)
        b.registry.set_healthy(second, False)
        await _until(lambda: a.primary(viewer) == b.primary(viewer) == first)
    finally:
        await _stop(tasks, stores)


@async_test
async def test_a_replica_probes_only_the_routers_streaming_to_it(store: Store) -> None:
    bus = Bus()
    a, b = bus.join("a", store), bus.join("b", store)
    first, second, _ = routers(a, b)  # first streams to a, second to b
    pinged: list[int] = []
    a.tailnet.ping = lambda node_id, url: pinged.append(node_id)  # type: ignore[method-assign]
    tokens = iter(range(1000))
    probing = Probing(
        RouterProbes(interval=timedelta(seconds=10), misses=2, token=lambda: f"t{next(tokens)}"),
        a.registry,
        a.tailnet,
        url=lambda token: f"https://ctl.example/machine/probe/{token}",
        clock=lambda: T0,
        log=LOG,
    )
    a.tailnet.settle()  # the joins' recompile, deferred on a running loop
    task = asyncio.create_task(probing.run())
    await asyncio.sleep(0.05)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert a.tailnet.shared_routers() == {first, second}
    assert pinged == [first]  # b probes its own router and tells a
