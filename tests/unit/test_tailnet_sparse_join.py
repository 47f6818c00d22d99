"""A join or a leave costs what it changes, not what the tailnet holds: the
settle it triggers converts, compares and copies only the nodes that changed
(counted with spies), and whatever sequence of joins, leaves and other node
changes arrives, the maps served equal a fresh compile's."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.protocol.keys import NodePublic
from server.store import open_store
from server.store.interface import Store
from server.tailnet import NodeRegistry, Tailnet, TailnetSource, hubchanges, hubcontext, hubsettle
from server.tailnet import hub as hub_module
from server.tailnet import views as views_module
from tests.unit.control_client import T0
from tests.unit.test_tailnet_commit import BASE, register, serving, source, store
from tests.unit.test_tailnet_offloop import assert_maps_are_fresh

__all__ = ["store"]  # the fixture

POLICY: dict[str, Any] = {
    **BASE,
    "acls": [
        *BASE["acls"],
        {"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self:*"]},
        {"action": "accept", "src": ["bob@example.com"], "dst": ["tag:web:443"]},
    ],
}
NODES = 120


def tailnet_of(store: Store, nodes: int = NODES) -> tuple[NodeRegistry, Tailnet, list[int]]:
    src = replace(source("sparse", POLICY), explicit_routes={"tag:web": ("10.0.0.0/24",)})
    registry, tailnet = serving(store, src)
    ids = [
        register(registry, n + 1, f"n{n}", "alice" if n % 2 else "bob", ())
        if n % 7
        else register(registry, n + 1, f"web{n}", None, ("tag:web",))
        for n in range(nodes)
    ]
    for node_id in ids:
        registry.connected(node_id)
    tailnet.settle()
    for node_id in ids:  # every session has read its view
        tailnet.open_session(node_id)
    return registry, tailnet, ids


def commit_of(sid: str, port: int, *, without_bob: bool = False) -> TailnetSource:
    """POLICY with one rule more (naming `port`), over the same users or without bob."""
    rule = {"action": "accept", "src": ["alice@example.com"], "dst": [f"autogroup:self:{port}"]}
    src = source(sid, {**POLICY, "acls": [*POLICY["acls"], rule]})
    src = replace(src, explicit_routes={"tag:web": ("10.0.0.0/24",)})
    if without_bob:
        return replace(src, users={k: v for k, v in src.users.items() if k != "bob"})
    return src


def test_a_policy_commit_over_the_same_users_converts_and_compares_only_what_changed(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry, tailnet, ids = tailnet_of(store)
    converted = counting(monkeypatch, views_module, "to_topology_node")
    looked_up = counting(monkeypatch, views_module.TopologyNodes, "__call__")
    served = counting(monkeypatch, Tailnet, "_served")
    tailnet.swap_source(commit_of("c1", 8443))
    assert converted == []
    routers = sum(1 for i in ids if (n := registry.get(i)) is not None and n.tags)
    assert len(looked_up) <= routers  # (before: one cached lookup per node)
    assert len(served) <= 2  # (before: every node's owner looked up again)
    assert_maps_are_fresh(store, tailnet)


def counting(monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> list[Any]:
    """Each call of `module.name`, by its first argument."""
    calls: list[Any] = []
    real: Callable[..., Any] = getattr(module, name)

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(args[0] if args else None)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, spy)
    return calls


def test_a_join_converts_and_compares_only_what_changed(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry, tailnet, ids = tailnet_of(store)
    converted = counting(monkeypatch, views_module, "to_topology_node")
    routes_read = [
        counting(monkeypatch, module, "advertised_routes")
        for module in (hub_module, hubchanges, hubcontext, hubsettle)
    ]
    looked_up = counting(monkeypatch, views_module.TopologyNodes, "__call__")
    newcomer = register(registry, 1000, "newcomer", "alice")
    tailnet.settle()
    assert newcomer in tailnet.context.nodes
    assert len(converted) == 1  # the newcomer alone, as the compiler sees it
    assert len(looked_up) <= 2  # (before: one cached lookup per node)
    assert sum(map(len, routes_read)) <= 4  # (before: three passes over every node)
    assert_maps_are_fresh(store, tailnet)


def test_a_join_keeps_every_view_it_cannot_touch(store: Store) -> None:
    registry, tailnet, ids = tailnet_of(store)
    before = tailnet.context.views
    kept = {i: before.get(i) for i in ids}
    register(registry, 1000, "newcomer", "alice")
    tailnet.settle()
    after = tailnet.context.views
    changed = after.changed
    assert changed is not None and len(changed) < len(ids) // 2
    assert all(after.get(i) is kept[i] for i in ids if i not in changed)


def test_a_leave_ends_its_sessions_and_compares_only_what_changed(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry, tailnet, ids = tailnet_of(store)
    handle = tailnet.open_session(ids[3])
    converted = counting(monkeypatch, views_module, "to_topology_node")
    registry.remove(ids[3])
    tailnet.settle()
    assert handle.closed
    assert ids[3] not in tailnet.context.nodes
    assert converted == []
    assert_maps_are_fresh(store, tailnet)


OPS = st.lists(
    st.tuples(
        st.sampled_from(
            [
                "join",
                "tagged",
                "remove",
                "rename",
                "tag",
                "online",
                "offline",
                "rekey",
                "endpoints",
                "route",
                "os",
                "settle",
                "commit",
                "cut",
            ]
        ),
        st.integers(0, 1000),
    ),
    max_size=30,
)


@settings(max_examples=100, deadline=None)
@given(ops=OPS)
def test_any_joins_and_leaves_serve_what_a_fresh_compile_does(
    tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[str, int]]
) -> None:
    store = open_store(Path(":memory:"))
    try:
        registry, tailnet, ids = tailnet_of(store, 12)
        serial = 2000
        for op, k in ops:
            live = [i for i in ids if registry.get(i) is not None]
            target = live[k % len(live)] if live else None
            if op == "commit":  # the policy alone: the same users, another rule
                tailnet.swap_source(commit_of(f"c{k}", k + 1))
            elif op == "cut":  # bob's nodes cut off, or back
                cut = "bob" in tailnet.source.users
                tailnet.swap_source(commit_of(f"u{k}", k + 1, without_bob=cut))
            elif op in ("join", "tagged"):
                serial += 1
                user, tags = ("bob", ()) if op == "join" else (None, ("tag:web",))
                ids.append(register(registry, serial, f"j{serial}", user, tags))
            elif target is None:
                continue
            elif op == "remove":
                registry.remove(target)
            elif op == "rename":
                registry.rename(target, f"r{k}-{target}")
            elif op == "tag":
                registry.set_tags(target, ["tag:db"])
            elif op == "online":
                registry.connected(target)
            elif op == "offline":
                registry.disconnected(target, T0)
            elif op in ("endpoints", "route", "os"):
                node = registry.get(target)
                assert node is not None
                info = node.hostinfo
                if op == "route":  # tag:web's are approved in git
                    info = msgspec.structs.replace(
                        info, routable_ips=("10.0.0.0/24",) if k % 2 else ()
                    )
                elif op == "os":
                    info = msgspec.structs.replace(info, os="linux" if k % 2 else "windows")
                endpoints = (f"127.0.0.1:{k}",) if op == "endpoints" else None
                registry.update_from_map(node, now=T0, hostinfo=info, endpoints=endpoints)
            elif op == "rekey":
                node = registry.get(target)
                assert node is not None
                serial += 1  # a key no node holds
                registry.renew_key(node, NodePublic((100_000 + serial).to_bytes(32, "big")), T0)
            else:
                tailnet.settle()
                assert_maps_are_fresh(store, tailnet)
        tailnet.settle()
        assert_maps_are_fresh(store, tailnet)
        # Among the nodes served: a cut-off node's online state is not followed
        # while no map shows it (it is read again when its user comes back).
        served = tailnet.context.nodes.keys()
        assert set(tailnet.context.online) & served == set(tailnet.online_ids()) & served
    finally:
        store.close()
