"""Joins arriving continuously share one recompile: a join's own checks (is it
served? may DERP relay for it?) do not force one, the first map waits for the
one that is due, and the coalescing window follows what a recompile costs."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from server.store.interface import Store
from server.tailnet import Tailnet
from server.tailnet import coalesce as hub_module
from server.tailnet.coalesce import LoopDefer
from tests.unit.test_tailnet_commit import four_nodes, register, store
from tests.unit.test_tailnet_offloop import assert_maps_are_fresh

__all__ = ["store"]  # the fixture


@pytest.fixture
def builds(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """One entry per map context built (a recompile)."""
    built: list[int] = []
    build = Tailnet._build_context

    def counting(self: Tailnet, *args: Any, **kwargs: Any) -> Any:
        built.append(1)
        return build(self, *args, **kwargs)

    monkeypatch.setattr(Tailnet, "_build_context", counting)
    return built


def test_joins_and_their_checks_share_one_recompile(store: Store, builds: list[int]) -> None:
    registry, tailnet, _ = four_nodes(store)
    tailnet.settle()
    builds.clear()

    async def storm() -> list[int]:
        joined = []
        for n in range(6):
            node_id = register(registry, 30 + n, f"alice-{n}", "alice")
            # what the map handler and DERP ask of every join, before its first map
            assert tailnet.serves(node_id)
            joined.append(node_id)
        assert builds == []
        settled: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        assert tailnet.after_settle(lambda: settled.set_result(None))
        await asyncio.wait_for(settled, 1.0)
        return joined

    joined = asyncio.run(storm())
    assert builds == [1]
    assert set(joined) <= tailnet.context.nodes.keys()
    assert not tailnet.after_settle(lambda: None)  # nothing due: nothing kept
    assert_maps_are_fresh(store, tailnet)


def test_serves_answers_as_the_next_recompile_will(store: Store) -> None:
    registry, tailnet, ids = four_nodes(store)
    outsider = register(registry, 40, "carol-laptop", "carol")  # carol is not in git
    assert not tailnet.serves(outsider)
    assert not tailnet.serves(999)
    registry.remove(ids["bob-laptop"])
    assert not tailnet.serves(ids["bob-laptop"])
    for node_id in (ids["alice-laptop"], ids["web"], outsider, 999):
        assert tailnet.serves(node_id) == (node_id in tailnet.context.nodes)


def test_the_window_follows_what_a_recompile_costs() -> None:
    defer = LoopDefer()
    ran: list[float] = []

    def slow() -> None:
        ran.append(time.monotonic())
        time.sleep(0.03)

    async def twice() -> None:
        assert defer(slow)
        await asyncio.sleep(hub_module.COALESCE_SECONDS + 0.06)
        assert defer.window >= 0.03  # the next join waits as long as the last recompile took
        assert defer(lambda: time.sleep(0.5))
        await asyncio.sleep(defer.window + 0.6)

    asyncio.run(twice())
    assert len(ran) == 1
    assert defer.window == hub_module.COALESCE_MAX_SECONDS  # bounded
    assert not LoopDefer()(slow)  # no loop: the caller applies the change at once


def test_the_window_covers_the_wave_a_call_starts() -> None:
    """In a big mesh the recompile is cheap and the sessions it wakes are
    not: the next window is as long as both, so joins arriving meanwhile
    share the next wave instead of each starting one."""
    defer = LoopDefer()

    async def wave() -> None:
        loop = asyncio.get_running_loop()

        def settle() -> None:  # cheap; wakes three sessions that each take 10 ms
            for _ in range(3):
                loop.call_soon(time.sleep, 0.01)

        assert defer(settle)
        await asyncio.sleep(hub_module.COALESCE_SECONDS + 0.1)

    asyncio.run(wave())
    assert defer.window >= 0.03


def test_calls_during_a_wave_share_the_next_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two changes that arrive while a deferred call is waiting run together
    (the hub defers only once while a recompile is due), and one arriving
    just after a wave waits for the window, so a continuous stream of joins
    still coalesces."""
    # The sleep stands for a recompile's CPU: the run's cost is read on this clock.
    monkeypatch.setattr(LoopDefer, "cpu_clock", staticmethod(time.monotonic))
    defer = LoopDefer()
    calls: list[str] = []

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        assert defer(lambda: (calls.append("first"), time.sleep(0.06)))
        await asyncio.sleep(hub_module.COALESCE_SECONDS + 0.07)
        asked = loop.time()
        assert defer.delay(asked) >= 0.03  # a join right after the wave waits
        assert defer(lambda: calls.append("second"))
        await asyncio.sleep(0.02)
        assert calls == ["first"]  # still waiting: later joins share it
        await asyncio.sleep(0.15)

    asyncio.run(scenario())
    assert calls == ["first", "second"]


def test_the_live_nodes_follow_approvals_removals_and_owners(store: Store) -> None:
    registry, tailnet, ids = four_nodes(store)
    tailnet.settle()
    waiting = register(registry, 50, "waiting", "alice", approved=False)
    later = register(registry, 51, "later", "alice")
    tailnet.settle()
    assert waiting not in tailnet.context.nodes and later in tailnet.context.nodes
    registry.approve(waiting)  # served now, behind a node served after it
    registry.remove(ids["bob-laptop"])
    registry.set_tags(ids["alice-laptop"], ["tag:web"])
    register(registry, 52, "carol-laptop", "carol")  # not in git: never served
    tailnet.settle()
    assert waiting in tailnet.context.nodes
    assert ids["bob-laptop"] not in tailnet.context.nodes
    assert_maps_are_fresh(store, tailnet)


def test_a_recompile_keeps_the_node_map_and_sets_only_what_changed(store: Store) -> None:
    registry, tailnet, ids = four_nodes(store)
    registry.connected(ids["web"])  # a volatile change: the map becomes persistent
    tailnet.settle()
    before, online = tailnet.context.nodes, tailnet.context.online
    newcomer = register(registry, 60, "alice-new", "alice")
    tailnet.settle()
    after = tailnet.context.nodes
    assert tailnet.context.online is online  # nobody came or went: not copied
    assert ids["web"] in online
    assert after.keys() == before.keys() | {newcomer}
    assert all(after[i] is before[i] for i in before)  # the same records, by identity
    registry.remove(ids["db"])
    tailnet.settle()
    assert tailnet.context.nodes.keys() == after.keys() - {ids["db"]}
    assert_maps_are_fresh(store, tailnet)
