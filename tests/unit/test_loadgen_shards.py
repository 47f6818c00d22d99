"""A shard's side of a watch across load-generator processes: it arms only
the clients of the user named, and answers with when each saw the change (or
an error naming how many never did)."""

from __future__ import annotations

import asyncio
from typing import Any

from bench.loadgen.client import ServerAddress
from bench.loadgen.fleet import Fleet
from bench.loadgen.netmap import ClientNetmap
from bench.loadgen.shards import _watch_or_collect, predicate


class Pipe:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def send(self, answer: dict[str, Any]) -> None:
        self.sent.append(answer)


def test_a_watch_arms_the_users_clients_and_collects_when_each_saw_it() -> None:
    async def run() -> list[dict[str, Any]]:
        times = iter([10.0, 11.0, 12.0, 13.0])
        fleet = Fleet(ServerAddress.loopback(1), "k0", clock=lambda: next(times))
        ours = [fleet.new_node("k1"), fleet.new_node("k1")]
        fleet.new_node("k2")  # another user's: not armed
        pipe = Pipe()
        watch = ("top_mentions", "PacketFilter", "47113")
        watching = await _watch_or_collect(pipe, fleet, ("watch", watch, "k1"), [])  # type: ignore[arg-type]
        for node in ours:
            node.streaming.set()
            node.netmap.apply({"PacketFilter": [{"DstPorts": [{"Ports": {"First": 47113}}]}]})
            node._settle(fleet.clock())
        await _watch_or_collect(pipe, fleet, ("collect", 1.0), watching)  # type: ignore[arg-type]
        return pipe.sent

    assert asyncio.run(run()) == [{"armed": 2}, {"times": [11.0, 12.0]}]


def test_clients_that_never_see_it_are_an_error_with_the_count() -> None:
    async def run() -> list[dict[str, Any]]:
        fleet = Fleet(ServerAddress.loopback(1), "k0")
        fleet.new_node()
        pipe = Pipe()
        watching = await _watch_or_collect(
            pipe, fleet, ("watch", ("has_peer_key", "nodekey:x"), None), []
        )  # type: ignore[arg-type]
        await _watch_or_collect(pipe, fleet, ("collect", 0.01), watching)  # type: ignore[arg-type]
        return pipe.sent

    assert asyncio.run(run()) == [{"armed": 1}, {"error": "1 of 1 clients never saw the change"}]


def test_watches_name_the_fleets_predicates() -> None:
    netmap = ClientNetmap(keep=None)
    netmap.peers[7] = {"Endpoints": ["192.0.2.1:41641"]}
    assert predicate(("peer_endpoints", 7, ["192.0.2.1:41641"]))(netmap)
    assert not predicate(("peer_endpoints", 7, ["192.0.2.2:41641"]))(netmap)
    assert not predicate(("has_peer_key", "nodekey:00"))(netmap)
