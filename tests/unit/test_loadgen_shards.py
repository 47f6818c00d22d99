"""The load generator's clients split over processes still measure a mesh:
every client, whichever shard holds it, reports when its own netmap saw a
join or an endpoint change made through another shard, and the times are on
one clock (bench/loadgen/shards.py). A shard arms only the clients of the
user named, and answers with when each saw the change (or how many never did)."""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, cast

import pytest

from bench.loadgen import shards
from bench.loadgen.client import ServerAddress
from bench.loadgen.fleet import LOADER_GC_THRESHOLDS, At, Fleet, Watch
from bench.loadgen.netmap import ClientNetmap
from bench.loadgen.shards import ShardedFleet, _Shard
from tests.unit.control_client import async_test_within, preauth_key, running_server

USERS = "users:\n  - {name: alice, email: alice@example.com, display_name: Alice}\n"
MESH = '{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}\n'
NODES = 6


def test_a_watch_names_a_predicate() -> None:
    assert Watch("holds_peers", (0,)).predicate()(ClientNetmap())
    assert not Watch("holds_peers", (1,)).predicate()(ClientNetmap())
    with pytest.raises(ValueError, match="no predicate"):
        Watch("anything")


@async_test_within(120)  # two child processes starting on a loaded machine
async def test_a_mesh_is_measured_across_shards(tmp_path: Path) -> None:
    files = {"users.yaml": USERS, "policy.hujson": MESH}
    async with running_server(tmp_path, files=files) as srv:
        key = preauth_key(srv, reusable=True)
        fleet = ShardedFleet(ServerAddress.loopback(srv.port), key, shards=2, concurrency=4)
        try:
            await fleet.ready()
            added = await fleet.add(NODES)
            assert len(added.seconds) == NODES
            assert len(added.phases) == NODES and all(len(p) == 4 for p in added.phases)
            await fleet.settled(NODES - 1, timeout=30)  # each shard's clients see the other's

            # A join in shard 1 reaches every client of both shards.
            newcomer = await fleet.new_node(1)
            seen = await fleet.observe(
                Watch("has_peer_key", (newcomer.node_key,)),
                lambda: fleet.bring_up(newcomer),
                timeout=30,
                exclude=newcomer,
            )
            assert len(seen) == NODES and all(0 <= s < 30 for s in seen)

            # An endpoint change of a node in shard 0 reaches every other client.
            mover = await fleet.node(0, 0)
            assert mover.node_id is not None
            endpoints = ["127.0.0.1:41641"]
            moved = await fleet.observe(
                Watch("peer_endpoints", (mover.node_id, endpoints)),
                lambda: fleet.set_endpoints(mover, endpoints),
                timeout=30,
                exclude=mover,
            )
            assert len(moved) == NODES  # NODES + 1 clients, less the mover

            # Times count from when the action says it happened, on the shards' clock.
            async def later() -> At:
                await asyncio.sleep(0)
                return At(time.monotonic() + 3600)

            never = Watch("holds_peers", (NODES,))  # already true: seen before `At`
            assert await fleet.observe(never, later, timeout=5) == [0.0] * (NODES + 1)

            with pytest.raises(TimeoutError, match=f"{NODES + 1} of {NODES + 1}"):
                await fleet.observe(
                    Watch("holds_peers", (99,)), lambda: asyncio.sleep(0), timeout=0.2
                )
        finally:
            await fleet.close()


def test_a_watch_arms_the_users_clients_and_collects_when_each_saw_it() -> None:
    async def run() -> list[dict[str, Any]]:
        times = iter([10.0, 11.0, 12.0, 13.0])
        fleet = Fleet(ServerAddress.loopback(1), "k0", clock=lambda: next(times))
        ours = [fleet.new_node("k1"), fleet.new_node("k1")]
        other = fleet.new_node("k2")  # another user's: not armed
        for node in [*ours, other]:
            node.stream = cast("Any", object())  # streaming (no server here)
        shard = _Shard(fleet)
        watch = Watch("top_mentions", ("PacketFilter", "47113"))
        armed = await shard._watch(watch, None, "k1")
        for node in ours:
            node.streaming.set()
            node.netmap.apply({"PacketFilter": [{"DstPorts": [{"Ports": {"First": 47113}}]}]})
            node._settle(fleet.clock())
        return [armed, await shard._collect(1.0)]

    assert asyncio.run(run()) == [{"watching": 2}, {"times": [11.0, 12.0], "missing": 0}]


def test_clients_that_never_see_it_are_counted() -> None:
    async def run() -> dict[str, Any]:
        fleet = Fleet(ServerAddress.loopback(1), "k0")
        fleet.new_node().stream = cast("Any", object())
        shard = _Shard(fleet)
        await shard._watch(Watch("has_peer_key", ("nodekey:x",)), None, None)
        return await shard._collect(0.01)

    assert asyncio.run(run()) == {"times": [], "missing": 1}


def test_watches_name_the_fleets_predicates() -> None:
    netmap = ClientNetmap(keep=None)
    netmap.peers[7] = {"Endpoints": ["192.0.2.1:41641"]}
    assert Watch("peer_endpoints", (7, ["192.0.2.1:41641"])).predicate()(netmap)
    assert not Watch("peer_endpoints", (7, ["192.0.2.2:41641"])).predicate()(netmap)
    assert not Watch("has_peer_key", ("nodekey:00",)).predicate()(netmap)


def test_a_shard_process_collects_cycles_rarely(monkeypatch: pytest.MonkeyPatch) -> None:
    """Its heap is netmaps of acyclic dicts: scanning them is wasted CPU."""
    seen: list[tuple[int, int, int]] = []

    def run(main: Any) -> None:
        main.close()
        seen.append(gc.get_threshold())

    before = gc.get_threshold()
    monkeypatch.setattr(shards.asyncio, "run", run)
    try:
        shards._shard_main(cast(Any, None), ServerAddress.loopback(1), "key", "s0-", 1)
    finally:
        gc.set_threshold(*before)
    assert seen == [LOADER_GC_THRESHOLDS]
    assert before != LOADER_GC_THRESHOLDS


def test_a_shard_warms_up_before_its_first_command(monkeypatch: pytest.MonkeyPatch) -> None:
    # One-time work (libsodium's bindings, h2's preface) is done before the
    # shard reports ready, so no measured registration pays it.
    calls: list[str] = []
    monkeypatch.setattr(shards, "warm_up", lambda: calls.append("warm_up"))

    def run(main: Any) -> None:
        main.close()
        calls.append("run")

    monkeypatch.setattr(shards.asyncio, "run", run)
    thresholds = gc.get_threshold()
    try:
        shards._shard_main(cast(Any, None), ServerAddress.loopback(1), "key", "s0-", 1)
    finally:
        gc.set_threshold(*thresholds)
    assert calls == ["warm_up", "run"]


def test_warming_up_loads_what_the_first_registration_would() -> None:
    code = (
        "import sys\n"
        "from bench.loadgen import h2client, warmup\n"
        "assert 'nacl.bindings' not in sys.modules\n"
        "warmup.warm_up()\n"
        "assert 'nacl.bindings' in sys.modules\n"
        "assert h2client.opening.cache_info().currsize == 1\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])
