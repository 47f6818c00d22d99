"""The collector is kept out of a commit's way (server/gcpolicy.py): no full
collection while a commit fans out, what it leaves frozen after, and what a
commit replaces still freed, so memory does not grow commit after commit."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from server.gcpolicy import HELD_THRESHOLD, GcPolicy
from server.store import open_store
from server.store.interface import Store
from server.tailnet.waking import PacedWakes
from tests.unit.control_client import T0
from tests.unit.test_commit_fanout import source, streaming


class Cycle:
    """Cyclic garbage once dropped: only a collection frees it."""

    def __init__(self) -> None:
        self.me = self


@pytest.fixture(autouse=True)
def collector() -> Iterator[None]:
    """The process's collector as it was: thresholds, nothing frozen."""
    threshold = gc.get_threshold()
    yield
    gc.set_threshold(*threshold)
    gc.unfreeze()


@pytest.fixture
def store() -> Iterator[Store]:
    s = open_store(Path(":memory:"))
    yield s
    s.close()


def old_collections() -> tuple[list[int], Any]:
    """Collections of generation 1 or 2 (what rescans a commit's objects)."""
    seen: list[int] = []

    def count(phase: str, info: dict[str, int]) -> None:
        if phase == "start" and info["generation"] > 0:
            seen.append(info["generation"])

    gc.callbacks.append(count)
    return seen, count


def test_a_hold_collects_only_the_youngest_and_its_release_freezes() -> None:
    policy = GcPolicy()
    before = gc.get_threshold()
    frozen = gc.get_freeze_count()
    seen, callback = old_collections()
    try:
        policy.hold()
        assert gc.get_threshold()[1:] == (HELD_THRESHOLD, HELD_THRESHOLD)
        # What a fan-out makes and keeps: containers enough for many full passes.
        kept = [[i] for i in range(300_000)]
        assert seen == []
        policy.release()
    finally:
        gc.callbacks.remove(callback)
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() >= frozen + len(kept)
    assert policy.stats.freezes == 1


def test_holds_nest_and_the_last_release_freezes() -> None:
    policy = GcPolicy()
    policy.hold()
    policy.hold()
    policy.release()
    assert policy.held and policy.stats.freezes == 0
    policy.release()
    assert not policy.held and policy.stats.freezes == 1
    policy.release()  # one too many: nothing happens
    assert policy.stats.freezes == 1


def test_cyclic_garbage_frozen_by_mistake_is_swept() -> None:
    policy = GcPolicy(sweep_every=3)
    garbage = Cycle()
    gone = weakref.ref(garbage)
    policy.hold()
    gc.collect(1)  # it outlived the young collections of the hold
    del garbage
    policy.release()  # frozen with the rest
    gc.collect()
    assert gone() is not None
    policy.hold()
    policy.release()
    assert gone() is not None
    policy.hold()
    policy.release()  # the third freeze sweeps
    assert gone() is None
    assert policy.stats.sweeps == 1 and policy.stats.swept >= 1


def test_a_connect_storm_is_frozen_a_batch_at_a_time() -> None:
    policy = GcPolicy(freeze_after=10)
    policy.grew(9)
    assert policy.stats.freezes == 0
    policy.grew()
    assert policy.stats.freezes == 1
    policy.hold()
    policy.grew(20)  # while held: the release freezes
    assert policy.stats.freezes == 1
    policy.release()
    assert policy.stats.freezes == 2


def test_a_registration_storm_is_frozen_in_small_batches() -> None:
    """Older collections in a storm rescan what the sessions since the last
    freeze made: a freeze every few young collections leaves them nothing."""
    policy = GcPolicy()
    seen, callback = old_collections()
    kept = []
    try:
        for _ in range(1000):
            kept.append([[i] for i in range(20)])  # what a session keeps
            policy.grew()
    finally:
        gc.callbacks.remove(callback)
    assert policy.stats.freezes >= 1000 // 32
    assert seen == []


def test_storm_freezes_bring_a_sweep_by_their_sessions_not_their_number() -> None:
    policy = GcPolicy(sweep_every=2, freeze_after=128)
    for _ in range(15):  # 1,920 sessions: less than two sweep steps
        policy.grew(128)
    assert policy.stats.freezes == 15 and policy.stats.sweeps == 0
    policy.grew(128)
    assert policy.stats.sweeps == 1
    policy.hold()
    policy.release()  # a commit's freeze still counts whole
    policy.hold()
    policy.release()
    assert policy.stats.sweeps == 2


def test_a_commit_is_held_until_its_fan_out_drained(store: Store) -> None:
    policy = GcPolicy()
    _, tailnet, streams = streaming(store, gc_policy=policy)
    tailnet.wakes = PacedWakes(batch=5)
    frozen = gc.get_freeze_count()

    async def commit() -> list[bool]:
        tailnet.swap_source(source("c1", "22,443"))
        held = []
        while tailnet.wakes.pending:
            held.append(policy.held)
            await asyncio.sleep(0)
        await asyncio.sleep(0)  # the last batch's sessions run
        await asyncio.sleep(0)
        held.append(policy.held)
        return held

    held = asyncio.run(commit())
    assert held[:-1] and all(held[:-1])  # through every batch
    assert held[-1] is False
    assert policy.stats.freezes >= 1
    assert gc.get_freeze_count() > frozen
    for handle, session in streams.values():
        assert session.step(tailnet.context, handle.take_wake(), T0) is not None


def test_replaced_indexes_are_freed_commit_after_commit(store: Store) -> None:
    """Frozen or not, what a commit replaces goes at once (it holds no cycle:
    reference counting frees it, no sweep needed): memory stays bounded."""
    policy = GcPolicy(sweep_every=1000)
    _, tailnet, streams = streaming(store, gc_policy=policy)
    replaced = []
    for k in range(10):
        views = tailnet.context.views  # the index and views a commit replaces
        replaced += [weakref.ref(views), weakref.ref(views.compiled.visibility)]
        del views
        tailnet.swap_source(source(f"c{k}", "22,443" if k % 2 else "*"))
        ctx = tailnet.context
        for handle, session in streams.values():
            session.step(ctx, handle.take_wake(), T0)
    assert policy.stats.freezes == 10 and policy.stats.sweeps == 0
    assert [ref for ref in replaced if ref() is not None] == []
