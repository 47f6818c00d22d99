"""`Deliveries.mark_peer`: a volatile change's viewers marked in one loop
(server/tailnet/handle.py) end where `SessionHandle.mark_peer` one by one
leaves them: the same marks, the same streams queued for one delivery turn,
the same tasks woken."""

from __future__ import annotations

import asyncio

from server.tailnet.handle import Deliveries, SessionHandle
from tests.unit.control_client import async_test


def _handles(deliveries: Deliveries | None) -> list[SessionHandle]:
    """Four kinds of viewer: idle with a deliver, idle with a deliver and
    already marked (so queued), no deliver (its task runs), woken already."""
    idle, marked, tasked, woken = (SessionHandle(n, deliveries) for n in range(1, 5))
    for handle in (idle, marked, woken):
        handle.deliver = lambda: True
    for handle in (idle, marked, tasked, woken):
        handle.full = False
    woken.wake.set()
    return [idle, marked, tasked, woken]


def _state(handles: list[SessionHandle]) -> list[tuple[set[int] | None, bool, bool]]:
    return [(h.peers, h.due, h.wake.is_set()) for h in handles]


@async_test
async def test_marking_in_bulk_leaves_the_handles_as_marking_each_does() -> None:
    one, bulk = Deliveries(), Deliveries()
    by_one, by_bulk = _handles(one), _handles(bulk)
    by_one[1].mark_peer(8)
    bulk.mark_peer([by_bulk[1]], 8)
    for handle in by_one:
        handle.mark_peer(9)
    bulk.mark_peer(by_bulk, 9)
    assert _state(by_bulk) == _state(by_one)
    assert _state(by_bulk) == [
        ({9}, True, False),
        ({8, 9}, True, False),
        ({9}, False, True),
        ({9}, False, True),
    ]
    assert [h.node_id for h in bulk._due] == [h.node_id for h in one._due] == [2, 1]
    runs: list[list[int]] = []
    bulk.bulk = lambda due: runs.append([h.node_id for h in due]) or []
    await asyncio.sleep(0)
    assert runs == [[2, 1]]  # one turn for the whole wave
    assert bulk.delivered == 2 and not bulk._due


def test_without_a_loop_each_viewer_s_task_is_woken() -> None:
    deliveries = Deliveries()
    handles = _handles(deliveries)
    deliveries.mark_peer(handles, 9)
    assert _state(handles) == [({9}, False, True)] * 4
    assert not deliveries._due


def test_a_handle_of_no_deliveries_is_woken() -> None:
    handles = _handles(None)
    Deliveries().mark_peer(handles, 9)
    assert _state(handles) == [({9}, False, True)] * 4
