"""`NodeRegistry.known`: every node as the store holds it, read from memory
(a served commit's warnings and route announcements use it instead of a read
of every row, which ran before the commit's fan-out)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from server.protocol.keys import MachinePublic, NodePublic
from server.store import open_store
from server.store.interface import Store
from server.store.model import Node, Registration
from server.tailnet import NodeRegistry

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _register(registry: NodeRegistry, n: int) -> int:
    raw = n.to_bytes(32, "big")
    return registry.register(
        Registration(
            machine_key=MachinePublic(raw),
            node_key=NodePublic(raw),
            hostname=f"n{n}",
            user="alice",
            tags=(),
            now=T0,
            approved=True,
            key_expiry=T0 + timedelta(days=90),
        )
    ).id


def count_node_reads(store: Store) -> Callable[[], int]:
    """From now on, how many times `store` was asked for every node."""
    reads = 0
    list_nodes = store.list_nodes

    def counted() -> list[Node]:
        nonlocal reads
        reads += 1
        return list_nodes()

    store.list_nodes = counted  # type: ignore[method-assign]
    return lambda: reads


def test_known_is_what_the_store_holds_after_every_kind_of_write() -> None:
    registry = NodeRegistry(open_store(Path(":memory:")), log=logging.getLogger("test"))
    ids = [_register(registry, n) for n in range(1, 9)]
    assert registry.known() == registry.nodes()
    node = registry.get(ids[0])
    assert node is not None
    registry.update_from_map(node, now=T0, endpoints=("127.0.0.1:41641",))
    registry.rename(ids[1], "renamed")
    registry.set_tags(ids[2], ["tag:server"])
    registry.set_key_expiry(ids[3], T0 + timedelta(days=1))
    registry.connected(ids[4])
    registry.disconnected(ids[4], T0 + timedelta(hours=1))
    registry.remove(ids[5])
    ids.append(_register(registry, 99))
    assert [n.id for n in registry.known()] == sorted(set(ids) - {ids[5]})
    assert registry.known() == registry.nodes()


def test_known_does_not_read_the_store() -> None:
    store = open_store(Path(":memory:"))
    registry = NodeRegistry(store, log=logging.getLogger("test"))
    for n in range(1, 4):
        _register(registry, n)
    registry.nodes()  # start-up's read
    reads = count_node_reads(store)
    assert len(registry.known()) == 3
    assert reads() == 0


def test_a_served_commit_takes_its_nodes_from_memory() -> None:
    import time

    from gitctl.policy import parse_policy
    from server.metrics import Metrics
    from server.sources.serving import CommitServing
    from server.tailnet import TailnetSource, running_tailnet

    store = open_store(Path(":memory:"))
    source = TailnetSource(
        id="c1",
        domain="tailnet.example",
        dns_config={},
        users={"alice": ("alice@example.com", "Alice")},
        policy=parse_policy({"acls": []}),
    )
    log = logging.getLogger("test")
    registry, tailnet = running_tailnet(store, source, derp_regions=[], log=log, clock=lambda: T0)
    ids = [_register(registry, n) for n in range(1, 6)]
    rechecked: list[int] = []
    serving = CommitServing(
        tailnet,
        registry,
        store,
        clock=lambda: T0,
        log=log,
        metrics=Metrics(monotonic=time.monotonic),
        forget_approvals=lambda: None,
        routes_rechecked=lambda nodes: rechecked.extend(n.id for n in nodes),
    )
    reads = count_node_reads(store)
    serving._served(source)
    assert rechecked == ids
    assert reads() == 0


def test_a_commit_rechecks_the_routes_of_route_advertisers_only() -> None:
    import msgspec

    from server.webhooks.source import EventSource

    registry = NodeRegistry(open_store(Path(":memory:")), log=logging.getLogger("test"))
    ids = [_register(registry, n) for n in range(1, 6)]
    router = registry.get(ids[0])
    assert router is not None
    info = msgspec.structs.replace(router.hostinfo, routable_ips=("10.0.0.0/24",))
    registry.update_from_map(router, now=T0, hostinfo=info)
    approved = {ids[0]: ("10.0.0.0/24",)}
    asked: list[int] = []

    def served(n: Node) -> tuple[str, ...]:
        asked.append(n.id)
        return approved.get(n.id, ())

    source = EventSource(clock=lambda: T0, served_routes=served)
    sent: list[Any] = []
    source.attach(sent.append, [])
    asked.clear()
    source.routes_rechecked(registry.known())
    assert asked == [ids[0]]  # (before: every node's served routes)
    assert [e.type for e in sent] == ["route.approved"]
    approved.clear()  # a commit no longer approves them: announced as removed
    source.routes_rechecked(registry.known())
    assert [e.data["removed"] for e in sent[1:]] == [["10.0.0.0/24"]]
