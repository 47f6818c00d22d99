"""A commit's fan-out wakes sessions a batch per event-loop iteration, so
sockets (DERP, control) are served between batches."""

from __future__ import annotations

import asyncio
from pathlib import Path

from server.store import open_store
from server.tailnet.waking import PacedWakes
from tests.unit.control_client import T0
from tests.unit.test_commit_fanout import PER_USER, USERS, source, streaming


def test_events_are_set_a_batch_per_loop_iteration() -> None:
    async def run() -> list[int]:
        wakes, events = PacedWakes(batch=3), [asyncio.Event() for _ in range(10)]
        wakes.set(events)
        seen = [sum(e.is_set() for e in events)]
        while wakes.pending:
            await asyncio.sleep(0)  # what a socket's callback gets between batches
            seen.append(sum(e.is_set() for e in events))
        return seen

    assert asyncio.run(run()) == [0, 3, 6, 9, 10]


def test_without_a_loop_or_with_few_events_they_are_set_at_once() -> None:
    events = [asyncio.Event() for _ in range(5)]
    PacedWakes(batch=3).set(events)  # no running loop: nothing would run a pacer
    assert all(e.is_set() for e in events)

    async def few() -> bool:
        events = [asyncio.Event() for _ in range(3)]
        PacedWakes(batch=3).set(events)
        return all(e.is_set() for e in events)

    assert asyncio.run(few())


def test_a_commit_wakes_every_session_in_batches() -> None:
    store = open_store(Path(":memory:"))
    try:
        _, tailnet, streams = streaming(store)
        tailnet.wakes = PacedWakes(batch=5)

        async def commit() -> list[int]:
            tailnet.swap_source(source("c1", "22,443"))
            counts = []
            while tailnet.wakes.pending:
                counts.append(sum(h.wake.is_set() for h, _ in streams.values()))
                await asyncio.sleep(0)
            counts.append(sum(h.wake.is_set() for h, _ in streams.values()))
            return counts

        counts = asyncio.run(commit())
        total = USERS * PER_USER
        assert counts == [*range(0, total, 5), total]
        # Marked at once (a session woken for another reason sees the commit too).
        for handle, session in streams.values():
            wake = handle.take_wake()
            assert wake.full
            assert session.step(tailnet.context, wake, T0) is not None
    finally:
        store.close()
