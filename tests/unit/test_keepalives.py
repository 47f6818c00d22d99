"""The keep-alive wheel (server/tailnet/keepalives.py): one timer for every
idle map stream, stepped here with explicit times."""

from __future__ import annotations

import asyncio

from server.tailnet.hub import SessionHandle
from server.tailnet.keepalives import KeepAlives
from tests.unit.control_client import async_test


@async_test
async def test_streams_are_marked_when_their_slot_is_due_and_not_before() -> None:
    wheel = KeepAlives()
    early, late = SessionHandle(1), SessionHandle(2)
    early.take_wake()  # the first map was sent
    wheel.schedule(early, 1000.2)
    wheel.schedule(late, 1050.0)
    assert wheel.next_due() == 1001.0  # rounded up to its tick: never early
    assert wheel.handle_timer(1000.9) == []
    assert wheel.handle_timer(1001.0) == [early]
    assert early.keepalive and early.wake.is_set()
    assert not late.keepalive and len(wheel) == 1
    assert early.take_keepalive() and not early.wake.is_set()  # woken for it alone


@async_test
async def test_a_stream_woken_meanwhile_moves_its_deadline_and_a_closed_one_leaves() -> None:
    wheel = KeepAlives()
    handle, gone = SessionHandle(1), SessionHandle(2)
    wheel.schedule(handle, 1000.0)
    wheel.schedule(gone, 1000.0)
    wheel.schedule(handle, 1055.0)  # it sent a message: the next keep-alive is later
    wheel.cancel(gone)
    assert wheel.handle_timer(1054.0) == []
    assert len(wheel) == 1
    assert wheel.handle_timer(1055.0) == [handle]
    assert len(wheel) == 0 and wheel.next_due() is None


@async_test
async def test_a_keepalive_due_with_a_change_leaves_the_wake_for_the_change() -> None:
    wheel = KeepAlives()
    handle = SessionHandle(1)
    handle.take_wake()  # the first map was sent
    wheel.schedule(handle, 1000.0)
    handle.mark_peer(7)
    wheel.handle_timer(1000.0)
    assert handle.take_keepalive()
    assert handle.wake.is_set() and handle.take_wake().peers == {7}


@async_test
async def test_thousands_of_streams_share_one_loop_timer_that_fires_on_time() -> None:
    loop = asyncio.get_running_loop()
    wheel = KeepAlives()
    handles = [SessionHandle(i) for i in range(2000)]
    for i, handle in enumerate(handles):
        handle.take_wake()
        wheel.schedule(handle, loop.time() + 0.05 + (i % 4) * 0.01, tick=0.01)
    await asyncio.wait_for(asyncio.gather(*(h.wake.wait() for h in handles)), 2)
    assert all(h.take_keepalive() for h in handles)
    assert len(wheel) == 0


@async_test
async def test_a_zero_interval_still_schedules() -> None:
    wheel = KeepAlives()
    handle = SessionHandle(1)
    wheel.schedule(handle, 1000.0, tick=0.0)
    assert wheel.handle_timer(1000.0) == [handle]


@async_test
async def test_a_later_deadline_is_noted_and_the_stream_moves_when_its_slot_comes() -> None:
    wheel = KeepAlives()
    handle = SessionHandle(1)
    handle.take_wake()
    wheel.schedule(handle, 1000.0)
    for at in (1010.0, 1020.0, 1030.5):  # messages sent: each pushes it later
        wheel.schedule(handle, at)
    assert wheel.next_due() == 1000.0  # not moved in the wheel each time
    assert wheel.handle_timer(1000.0) == []  # its old slot: moved, not marked
    assert wheel.next_due() == 1031.0 and not handle.keepalive
    assert wheel.handle_timer(1031.0) == [handle]
    assert handle.keepalive and len(wheel) == 0
    wheel.schedule(handle, 1100.0)
    wheel.schedule(handle, 1090.0)  # earlier than its slot: moved at once
    assert wheel.handle_timer(1090.0) == [handle]
