"""The wake-up flag of map sessions and DERP clients: asyncio.Event's
behaviour, with no waiter list while nobody waits."""

from __future__ import annotations

import asyncio

from server.tailnet import SessionHandle
from server.wakeup import Wakeup
from tests.unit.control_client import async_test


@async_test
async def test_set_wakes_every_waiter_and_stays_set_until_cleared() -> None:
    wake = Wakeup()
    waiters = [asyncio.create_task(wake.wait()) for _ in range(3)]
    await asyncio.sleep(0)
    assert not any(w.done() for w in waiters)
    wake.set()
    assert await asyncio.gather(*waiters) == [True, True, True]
    assert wake.is_set() and await wake.wait()
    wake.clear()
    assert not wake.is_set()
    assert wake._waiters is None  # nobody waits: nothing held


@async_test
async def test_a_waiter_that_times_out_leaves_the_others_waiting() -> None:
    wake = Wakeup()
    other = asyncio.create_task(wake.wait())
    try:
        async with asyncio.timeout(0.01):
            await wake.wait()
        raise AssertionError("woken without a set")
    except TimeoutError:
        pass
    assert not other.done()
    wake.set()
    assert await other
    assert wake._waiters is None


def test_an_idle_session_holds_no_per_peer_container() -> None:
    handle = SessionHandle(1)
    assert handle.peers is None
    handle.mark_peer(7)
    handle.mark_peer(8)
    wake = handle.take_wake()
    assert wake.peers == {7, 8}
    assert handle.peers is None and not handle.wake.is_set()


def test_a_wake_without_peers_allocates_no_set() -> None:
    first, second = SessionHandle(1), SessionHandle(2)
    assert first.take_wake().peers is second.take_wake().peers
