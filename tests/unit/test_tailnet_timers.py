"""What time and node changes do to DERP and ephemeral nodes, stepped with
the clock passed in (server/tailnet/timers.py, derp_access.py)."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from server.protocol.keys import MachinePublic, NodePublic
from server.store.interface import Store
from server.store.model import Node, Registration
from server.tailnet import NodeRegistry, Tailnet
from server.tailnet.derp_access import DerpAccess
from server.tailnet.timers import Sweep
from tests.unit.control_client import T0
from tests.unit.test_tailnet_commit import BASE, serving, source, store

__all__ = ["store"]  # the fixture


def join(
    registry: NodeRegistry, n: int, *, ephemeral: bool = False, expiry: datetime | None = None
) -> NodePublic:
    raw = n.to_bytes(32, "big")
    registry.register(
        Registration(
            machine_key=MachinePublic(raw),
            node_key=NodePublic(raw),
            hostname=f"node-{n}",
            user="alice",
            now=T0,
            ephemeral=ephemeral,
            key_expiry=expiry,
        )
    )
    return NodePublic(raw)


def sweep(
    registry: NodeRegistry, tailnet: Tailnet, dropped: list[NodePublic], expired: list[Node]
) -> Sweep:
    return Sweep(
        registry,
        tailnet,
        inactivity=lambda: timedelta(minutes=30),
        disconnect=dropped.append,
        on_expired=expired.append,
        clock=lambda: T0,
        log=logging.getLogger("test"),
    )


def test_a_key_that_expires_loses_derp_once_and_is_announced(store: Store) -> None:
    registry, tailnet = serving(store, source("base", BASE))
    soon = join(registry, 1, expiry=T0 + timedelta(minutes=1))
    later = join(registry, 2, expiry=T0 + timedelta(hours=1))
    tailnet.settle()
    dropped: list[NodePublic] = []
    expired: list[Node] = []
    s = sweep(registry, tailnet, dropped, expired)
    s.handle_timer(T0, T0 + timedelta(minutes=2))
    assert dropped == [soon] and [n.node_key for n in expired] == [soon]
    s.handle_timer(T0 + timedelta(minutes=2), T0 + timedelta(minutes=4))
    assert dropped == [soon]  # announced once, not at every sweep
    assert later not in dropped


def test_the_sweep_follows_expiries_changed_between_sweeps(store: Store) -> None:
    """The sweep keeps the expiries in order between node changes (an idle
    tailnet's sweep looks only at what expires); a renewed key is not
    announced at its old time, a shortened one at its new time."""
    registry, tailnet = serving(store, source("base", BASE))
    renewed = join(registry, 1, expiry=T0 + timedelta(minutes=3))
    join(registry, 2, expiry=T0 + timedelta(hours=1))
    shortened = join(registry, 3, expiry=T0 + timedelta(hours=2))
    tailnet.settle()
    dropped: list[NodePublic] = []
    s = sweep(registry, tailnet, dropped, [])
    s.handle_timer(T0, T0 + timedelta(minutes=1))
    assert dropped == []
    ids = {n.node_key: n.id for n in registry.nodes()}
    registry.set_key_expiry(ids[renewed], T0 + timedelta(days=1))
    registry.set_key_expiry(ids[shortened], T0 + timedelta(minutes=4))
    tailnet.settle()
    s.handle_timer(T0 + timedelta(minutes=1), T0 + timedelta(minutes=5))
    assert dropped == [shortened]


def test_an_inactive_ephemeral_node_is_removed_and_a_lasting_one_kept(store: Store) -> None:
    registry, tailnet = serving(store, source("base", BASE))
    join(registry, 1, ephemeral=True)
    join(registry, 2)
    tailnet.settle()
    s = sweep(registry, tailnet, [], [])
    s.handle_timer(T0, T0 + timedelta(minutes=10))
    assert len(registry.nodes()) == 2  # not inactive long enough yet
    s.handle_timer(T0 + timedelta(minutes=10), T0 + timedelta(minutes=31))
    assert [n.hostname for n in registry.nodes()] == ["node-2"]


def test_derp_refuses_and_drops_a_deleted_node(store: Store) -> None:
    registry, tailnet = serving(store, source("base", BASE))
    key = join(registry, 1)
    tailnet.settle()
    access = DerpAccess(registry, tailnet, clock=lambda: T0)
    dropped: list[NodePublic] = []
    access.follow(dropped.append)
    assert access.allowed(key)
    node = registry.by_node_key(key)
    assert node is not None
    registry.remove(node.id)
    assert dropped == [key] and not access.allowed(key)


def test_a_sweep_after_endpoint_changes_looks_only_at_what_changed(store: Store) -> None:
    registry, tailnet = serving(store, source("base", BASE))
    keys = [
        join(registry, n, ephemeral=n % 3 == 0, expiry=T0 + timedelta(minutes=n))
        for n in range(1, 40)
    ]
    tailnet.settle()
    dropped: list[NodePublic] = []
    expired: list[Node] = []
    s = sweep(registry, tailnet, dropped, expired)
    s.handle_timer(T0, T0 + timedelta(seconds=1))
    expiries, ephemerals = s._index(tailnet.context)
    for n, key in enumerate(keys[:10]):
        node = registry.by_node_key(key)
        assert node is not None
        registry.update_from_map(node, now=T0, endpoints=(f"192.0.2.{n + 1}:41641",))
        s.handle_timer(
            T0 + timedelta(minutes=n, seconds=1), T0 + timedelta(minutes=n + 1, seconds=1)
        )
    assert s._index(tailnet.context) == (expiries, ephemerals)
    assert expiries.rebuilds == ephemerals.rebuilds == 1  # (before: one full pass per sweep)
    assert [e.id for e in expired] == [registry.by_node_key(k).id for k in keys[:10]]  # type: ignore[union-attr]


def test_the_sweep_lets_go_of_delta_messages_past_their_hold(store: Store) -> None:
    registry, tailnet = serving(store, source("base", BASE))
    join(registry, 1)
    tailnet.settle()
    deltas = tailnet.context.entries.deltas
    deltas.message("PeersChanged", [b'{"ID":1}'], [], [], T0)
    assert deltas.held_bytes > 0
    sweep(registry, tailnet, [], []).handle_timer(T0, T0 + timedelta(seconds=5))
    assert deltas.held_bytes == 0
