"""A commit compiles in a worker thread while the event loop keeps serving:
what it then serves equals a compile on the loop, node changes made while it
compiled are not lost, and joins close together share one recompile."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import replace
from typing import Any

import pytest

from server.store.interface import Store
from server.tailnet import Tailnet, hubcontext
from server.tailnet import views as views_module
from server.tailnet.coalesce import COALESCE_SECONDS
from server.tailnet.mapper import build_map
from tests.unit.control_client import T0
from tests.unit.test_tailnet_commit import (
    ALICE_TO_WEB,
    BASE,
    four_nodes,
    register,
    serving,
    source,
    store,
    woken,
)

__all__ = ["store"]  # the fixture


def assert_maps_are_fresh(store: Store, tailnet: Tailnet) -> None:
    # A fresh compile with the served tailnet's runtime state: who is online,
    # and the HA election's memory (a primary keeps its subnet while it stays
    # eligible, so which of two routers serves it depends on which advertised
    # it first, which no compile of the store can know).
    _, fresh = serving(store, tailnet.source, primaries=tailnet.primaries)
    ctx = replace(fresh.context, online=tailnet.online_ids())
    assert tailnet.context.nodes.keys() == ctx.nodes.keys()
    for node_id in ctx.nodes:
        assert build_map(tailnet.context, node_id, T0) == build_map(ctx, node_id, T0)


def test_a_commit_compiled_off_the_loop_wakes_only_the_nodes_its_rule_reaches(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, tailnet, ids = four_nodes(store)
    handles = {name: tailnet.open_session(node_id) for name, node_id in ids.items()}
    woken(handles)
    threads: list[int] = []
    compile_views = hubcontext.compile_views

    def recording(*args: Any, **kwargs: Any) -> Any:
        threads.append(threading.get_ident())
        return compile_views(*args, **kwargs)

    monkeypatch.setattr(hubcontext, "compile_views", recording)
    commit = source("c1", {**BASE, "acls": [*BASE["acls"], ALICE_TO_WEB]})
    asyncio.run(tailnet.swap_source_off_loop(commit))

    assert threads and threading.get_ident() not in threads  # not on the loop's thread
    assert tailnet.source.id == "c1"
    assert woken(handles) == {"alice-laptop", "web"}
    assert_maps_are_fresh(store, tailnet)


def test_a_node_that_joins_while_a_commit_compiles_is_in_the_maps_it_serves(
    store: Store,
) -> None:
    registry, tailnet, ids = four_nodes(store)
    handles = {name: tailnet.open_session(node_id) for name, node_id in ids.items()}
    woken(handles)

    async def commit_with_a_join() -> None:
        # Runs on the loop while the worker thread compiles the commit.
        asyncio.get_running_loop().call_soon(register, registry, 9, "alice-phone", "alice")
        await tailnet.swap_source_off_loop(
            source("c1", {**BASE, "acls": [*BASE["acls"], ALICE_TO_WEB]})
        )

    asyncio.run(commit_with_a_join())
    phone = next(n.id for n in registry.nodes() if n.given_name == "alice-phone")
    assert tailnet.serves(phone)
    assert "alice-laptop" in woken(handles)
    assert_maps_are_fresh(store, tailnet)


def test_joins_close_together_share_one_recompile(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry, tailnet, _ = four_nodes(store)
    compiles = 0
    compile_views = hubcontext.compile_views

    def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal compiles
        compiles += 1
        return compile_views(*args, **kwargs)

    monkeypatch.setattr(hubcontext, "compile_views", counting)

    async def storm() -> None:
        for n in range(10):  # a burst of registrations, then a timer's wait
            register(registry, 20 + n, f"alice-{n}", "alice")
        await asyncio.sleep(COALESCE_SECONDS * 4)

    asyncio.run(storm())
    assert compiles == 1
    assert len(tailnet.context.nodes) == 14
    assert_maps_are_fresh(store, tailnet)


def test_a_join_converts_only_the_newcomer_for_the_compiler(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each node is handed to the policy compiler once per change of its
    # record, not once per recompile: a join costs one conversion.
    registry, tailnet, _ = four_nodes(store)
    tailnet.settle()
    converted: list[int] = []
    convert = views_module.to_topology_node

    def counting(node: Any, *args: Any, **kwargs: Any) -> Any:
        converted.append(node.id)
        return convert(node, *args, **kwargs)

    monkeypatch.setattr(views_module, "to_topology_node", counting)
    newcomer = register(registry, 9, "newcomer", "alice")
    ctx = tailnet.context
    assert converted == [newcomer]
    assert newcomer in ctx.nodes and ctx.views.get(newcomer) is not None
    assert_maps_are_fresh(store, tailnet)
