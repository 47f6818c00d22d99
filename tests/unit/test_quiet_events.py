"""A change at a quiet moment reaches its viewers at once, not after the
coalescing window; changes that keep coming still share waves.

The loop's clock is frozen (`frozen_loop`): a deferred call then runs only
when a test moves the clock, so what runs "at once" is told apart from what
waits for the window without timing anything.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from server.store.interface import Store
from server.tailnet import NodeRegistry, Tailnet
from server.tailnet.coalesce import COALESCE_MAX_SECONDS, COALESCE_WORTH_SECONDS, LoopDefer
from tests.unit.control_client import T0
from tests.unit.test_tailnet_commit import register, serving, source, store

__all__ = ["store"]  # the fixture

MESH = {"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}


class FrozenClock:
    def __init__(self) -> None:
        self.now = 1000.0


def frozen_loop(scenario: Callable[[FrozenClock], Awaitable[None]]) -> None:
    """Run `scenario` on a loop whose clock moves only when it moves it."""

    async def main() -> None:
        clock = FrozenClock()
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(asyncio.get_running_loop(), "time", lambda: clock.now)
            # What a run costs, too: the clock LoopDefer reads it on.
            patch.setattr(LoopDefer, "cpu_clock", staticmethod(lambda: clock.now))
            await scenario(clock)

    asyncio.run(main())


async def turns(count: int = 4) -> None:
    for _ in range(count):
        await asyncio.sleep(0)


def test_a_call_at_a_quiet_moment_runs_on_the_next_turn() -> None:
    defer = LoopDefer()
    defer.window = COALESCE_MAX_SECONDS  # as a commit's wave leaves it
    ran: list[str] = []

    async def scenario(clock: FrozenClock) -> None:
        assert defer.delay(clock.now) == 0
        assert defer(lambda: ran.append("lone"))
        await turns(1)
        assert ran == ["lone"]

    frozen_loop(scenario)


def test_calls_while_a_wave_is_on_or_just_over_wait_for_the_window() -> None:
    defer = LoopDefer()
    ran: list[str] = []

    async def scenario(clock: FrozenClock) -> None:
        assert defer(lambda: ran.append("first"))
        assert defer(lambda: ran.append("during"))  # the first has not run yet
        await turns()
        assert ran == ["first"]
        assert defer.delay(clock.now) == defer.window > 0  # the wave just ended
        assert defer(lambda: ran.append("after"))
        await turns()
        assert ran == ["first"]
        clock.now += defer.window
        await turns()
        assert ran == ["first", "during", "after"]
        clock.now += 2 * defer.window  # quiet again: the next goes at once
        assert defer(lambda: ran.append("later"))
        await turns(1)
        assert ran[-1] == "later"

    frozen_loop(scenario)


def test_a_cheap_run_does_not_hurry_a_dear_one() -> None:
    """The wait-or-not rule follows each function's own last run: after a
    cheap endpoint wave, a join's recompile (dear) still waits for the
    window, so joins arriving in a stream keep sharing recompiles."""
    defer = LoopDefer()
    ran: list[str] = []

    async def scenario(clock: FrozenClock) -> None:
        def dear() -> None:
            ran.append("dear")
            clock.now += 2 * COALESCE_WORTH_SECONDS

        def cheap() -> None:
            ran.append("cheap")

        assert defer(dear)  # quiet: at once
        await turns()
        assert defer(cheap)  # never ran: waits, as any call after a wave did
        await turns()
        assert ran == ["dear"]
        clock.now += defer.window
        await turns()
        assert ran == ["dear", "cheap"]
        assert defer.delay(clock.now, cheap) == 0  # cheap last time: goes at once
        assert defer.delay(clock.now, dear) == defer.window > 0  # dear last time: waits

    frozen_loop(scenario)


def _mesh(store: Store, size: int) -> tuple[NodeRegistry, Tailnet, list[int]]:
    registry, tailnet = serving(store, source("mesh", MESH))
    ids = [register(registry, n + 1, f"n{n}", "alice") for n in range(size)]
    tailnet.settle()
    return registry, tailnet, ids


def _delivered(
    tailnet: Tailnet, ids: list[int], clock: FrozenClock | None = None, cost: float = 0.0
) -> dict[int, list[frozenset[int]]]:
    """Sessions for `ids` whose idle streams record the peers of each delivery;
    each delivery moves `clock` by `cost` (a wave that takes time)."""
    got: dict[int, list[frozenset[int]]] = {node_id: [] for node_id in ids}
    for node_id in ids:
        handle = tailnet.open_session(node_id)
        handle.take_wake()  # its first map

        def deliver(handle: Any = handle) -> bool:
            got[handle.node_id].append(handle.take_wake().peers)
            if clock is not None:
                clock.now += cost
            return True

        handle.deliver = deliver
    return got


def _move(registry: NodeRegistry, node_id: int, n: int) -> None:
    node = registry.get(node_id)
    assert node is not None
    registry.update_from_map(node, now=T0, endpoints=(f"192.0.2.{n}:41641",))


def test_a_lone_endpoint_change_reaches_its_peers_without_waiting(store: Store) -> None:
    registry, tailnet, ids = _mesh(store, 6)
    mover, viewers = ids[0], ids[1:]

    async def scenario(clock: FrozenClock) -> None:
        got = _delivered(tailnet, ids)
        _move(registry, mover, 1)
        await turns()
        assert all(got[v] == [frozenset({mover})] for v in viewers)

    frozen_loop(scenario)


def test_a_burst_of_endpoint_changes_shares_one_wave_after_the_first(store: Store) -> None:
    """A reconnect storm's changes arriving turn after turn, in a tailnet
    whose waves cost: the first goes at once, every later one waits for the
    window and they go as one message per session, not one per change."""
    registry, tailnet, ids = _mesh(store, 12)
    movers, viewer = ids[:10], ids[-1]

    async def scenario(clock: FrozenClock) -> None:
        got = _delivered(tailnet, ids, clock, COALESCE_WORTH_SECONDS / 4)  # 11 viewers
        for n, mover in enumerate(movers):
            _move(registry, mover, n + 1)
            await turns()
        assert got[viewer] == [frozenset(movers[:1])]
        clock.now += COALESCE_MAX_SECONDS
        await turns()
        assert got[viewer] == [frozenset(movers[:1]), frozenset(movers[1:])]

    frozen_loop(scenario)


def test_changes_after_cheap_waves_go_at_once_each(store: Store) -> None:
    """Changes turn after turn in a tailnet whose waves cost next to nothing
    (a few viewers): none waits for the window, each goes in its own wave.
    The wait would wake the process a second time per change, which costs
    more than repeating such a wave."""
    registry, tailnet, ids = _mesh(store, 4)
    movers, viewer = ids[:3], ids[-1]

    async def scenario(clock: FrozenClock) -> None:
        got = _delivered(tailnet, ids)
        for n, mover in enumerate(movers):
            _move(registry, mover, n + 1)
            await turns()
        assert got[viewer] == [frozenset({m}) for m in movers]

    frozen_loop(scenario)


def test_a_lone_join_reaches_its_peers_without_waiting(store: Store) -> None:
    registry, tailnet, ids = _mesh(store, 4)

    async def scenario(clock: FrozenClock) -> None:
        handles = {node_id: tailnet.open_session(node_id) for node_id in ids}
        for handle in handles.values():
            handle.take_wake()
        newcomer = register(registry, 99, "newcomer", "alice")
        await turns()
        assert not tailnet.after_settle(lambda: None)  # settled without the clock moving
        assert all(handle.top or handle.full for handle in handles.values())
        assert newcomer in tailnet.context.nodes

    frozen_loop(scenario)
