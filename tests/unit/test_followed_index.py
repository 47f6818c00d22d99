"""A runtime event costs what it changed: the indexes over the node map that
sessions and the router probes ask (whose keys expired in a span, which nodes
advertise routes) follow each replaced map through the change log instead of
looking at every node, and answer as a full pass would, whatever sequence of
maps they are asked about."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from server.store.interface import Store
from server.store.model import Node
from server.tailnet.changelog import ChangeLog
from server.tailnet.expiries import Expiries
from server.tailnet.persistent import PersistentMap
from server.tailnet.session import MapSession
from server.wire import Hostinfo, decode
from tests.unit.control_client import T0
from tests.unit.test_tailnet_commit import store
from tests.unit.test_tailnet_sparse_join import tailnet_of
from tests.unit.test_views_lazy import node as a_node

__all__ = ["store"]  # the fixture


def brute(nodes: Mapping[int, Node], since: datetime, now: datetime) -> list[int]:
    found = [(n.key_expiry, i) for i, n in nodes.items() if n.key_expiry is not None]
    return [i for e, i in sorted(found) if since < e <= now]


def node(node_id: int, hours: int | None) -> Node:
    expiry = None if hours is None else T0 + timedelta(hours=hours)
    return replace(a_node(node_id), key_expiry=expiry)


def test_a_replaced_map_is_followed_through_the_log_not_sorted_again() -> None:
    log = ChangeLog()
    nodes = PersistentMap({i: node(i, i % 50) for i in range(1, 2001)})
    index = Expiries(log)
    assert index.between(nodes, T0, T0 + timedelta(hours=3)) == brute(
        nodes, T0, T0 + timedelta(hours=3)
    )
    for step in range(20):  # endpoint changes, an expiry moved, a join, a leave
        node_id = 7 + step
        log.record((node_id,))
        nodes = nodes.set(node_id, node(node_id, 1 if step % 3 else None))
        log.record((5000 + step, 100 + step))
        nodes = nodes.changed([(5000 + step, node(5000 + step, 2))], [100 + step])
        span = (T0 + timedelta(minutes=30), T0 + timedelta(hours=2, minutes=step))
        assert index.between(nodes, *span) == brute(nodes, *span)
    assert index.rebuilds == 1  # (before: one full sort per replaced map)


def test_a_map_the_log_does_not_explain_is_indexed_again() -> None:
    log = ChangeLog()
    index = Expiries(log)
    main = PersistentMap({i: node(i, 1) for i in range(1, 11)})
    assert index.between(main, T0, T0 + timedelta(hours=1)) == list(range(1, 11))
    other = PersistentMap({i: node(i, 1) for i in range(1, 6)})  # another lineage, unlogged
    assert index.between(other, T0, T0 + timedelta(hours=1)) == list(range(1, 6))
    assert index.rebuilds == 2


OPS = st.lists(
    st.tuples(st.integers(1, 30), st.one_of(st.none(), st.integers(-5, 5)), st.booleans()),
    max_size=60,
)


@given(OPS, st.integers(-6, 6), st.integers(0, 8))
def test_any_logged_sequence_answers_as_a_full_sort(
    ops: list[tuple[int, int | None, bool]], start: int, width: int
) -> None:
    log = ChangeLog()
    index = Expiries(log)
    nodes: PersistentMap[int, Node] = PersistentMap({i: node(i, i % 7 - 3) for i in range(1, 16)})
    since = T0 + timedelta(hours=start)
    now = since + timedelta(hours=width)
    for node_id, hours, present in ops:
        log.record((node_id,))
        if present:
            nodes = nodes.set(node_id, node(node_id, hours))
        elif node_id in nodes:
            nodes = nodes.changed([], [node_id])
        assert index.between(nodes, since, now) == brute(nodes, since, now)


def test_an_endpoint_change_does_not_sort_every_expiry_again(store: Store) -> None:
    registry, tailnet, ids = tailnet_of(store)
    sessions = {i: (tailnet.open_session(i), MapSession(i)) for i in ids}

    def pump(now: datetime) -> None:
        tailnet.settle()
        for handle, session in sessions.values():
            if handle.wake.is_set() or handle.full or handle.top or handle.peers:
                session.step(tailnet.context, handle.take_wake(), now)

    pump(T0)
    index = tailnet.context.expiries
    for n in range(6):
        mover = registry.get(ids[n])
        assert mover is not None
        registry.update_from_map(mover, now=T0, endpoints=(f"192.0.2.{n + 1}:41641",))
        pump(T0 + timedelta(seconds=1 + n))  # its own session looks for expired peers
    assert index.rebuilds == 1  # the first look; then each change's id alone


def test_an_endpoint_change_does_not_look_at_every_node_for_routers(store: Store) -> None:
    registry, tailnet, ids = tailnet_of(store)
    assert tailnet.shared_routers() == frozenset()
    advertisers = tailnet._routers_memo[3] if tailnet._routers_memo else None
    assert advertisers is not None
    for n in range(5):
        mover = registry.get(ids[n + 1])
        assert mover is not None
        registry.update_from_map(mover, now=T0, endpoints=(f"192.0.2.{n + 1}:41641",))
        assert tailnet.shared_routers() == frozenset()  # the probes' question, every second
    assert advertisers.rebuilds == 1  # (before: every node looked at after each change)


def test_routers_that_start_and_stop_sharing_a_subnet_are_followed(store: Store) -> None:
    registry, tailnet, ids = tailnet_of(store)
    web = [i for i in ids if (n := registry.get(i)) is not None and n.tags][:2]
    assert tailnet.shared_routers() == frozenset()

    def advertise(node_id: int, routes: list[str]) -> None:
        node = registry.get(node_id)
        assert node is not None
        hostinfo = decode(Hostinfo, {"Hostname": node.hostname, "RoutableIPs": routes})
        registry.update_from_map(node, now=T0, hostinfo=hostinfo)
        tailnet.settle()

    advertise(web[0], ["10.0.0.0/24"])
    assert tailnet.shared_routers() == frozenset()
    advertise(web[1], ["10.0.0.0/24"])
    assert tailnet.shared_routers() == frozenset(web)
    advertise(web[0], [])
    assert tailnet.shared_routers() == frozenset()
