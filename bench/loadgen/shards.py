"""The simulated clients split over several processes, for when one Python
process cannot keep up with the server (thousands of Noise handshakes and
zstd streams on one core; in a 1,000-node mesh, every join's delta decoded
and applied by 999 clients).

Each shard is a child process running its own `Fleet` on its own event loop;
the parent sends it a command over a pipe and gets back what its clients
observed, plus the CPU seconds the shard used, so a run can say whether the
load generator set the pace. A measurement that watches one change across
every client (a commit, a join, an endpoint change) is split in two: every
shard starts watching (`Watch`, a predicate by name), the action runs, then
every shard reports when each of its clients saw the change. The shards' and
the parent's clocks are the same one (CLOCK_MONOTONIC, what asyncio's loop
time reads), so those times are comparable across processes.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from bench.loadgen.client import ServerAddress
from bench.loadgen.fleet import At, Fleet, SimNode, Watch, tune_gc
from bench.loadgen.warmup import warm_up

__all__ = ["NodeRef", "ShardResult", "ShardedFleet"]


@dataclass(frozen=True, slots=True)
class ShardResult:
    """What every shard's clients observed for one command, merged."""

    seconds: list[float]  # per node: until its first map
    cpu_s: float  # the shards' CPU over the command, summed
    retries: int = 0
    # per registration, seconds in each of fleet.PHASES
    phases: list[tuple[float, ...]] = field(default_factory=list)
    messages: int = 0  # map messages the clients applied, all told


@dataclass(frozen=True, slots=True)
class NodeRef:
    """One simulated node: which shard holds it, its index there, its keys."""

    shard: int
    index: int
    node_key: str
    node_id: int | None


class ShardedFleet:
    """`shards` processes, each with a `Fleet` of its share of the nodes."""

    def __init__(
        self, server: ServerAddress, auth_key: str, *, shards: int, concurrency: int
    ) -> None:
        context = multiprocessing.get_context("spawn")
        self._pipes: list[Connection] = []
        self._procs: list[multiprocessing.process.BaseProcess] = []
        per_shard = max(1, -(-concurrency // shards))
        for index in range(shards):
            parent, child = context.Pipe()
            proc = context.Process(
                target=_shard_main,
                args=(child, server, auth_key, f"s{index}-", per_shard),
                daemon=True,
            )
            proc.start()
            child.close()
            self._pipes.append(parent)
            self._procs.append(proc)
        self.count = 0
        self.clock = time.monotonic  # the shards' loops read the same clock

    async def ready(self) -> None:
        """Wait until every shard has started (imports take a second or so;
        not part of any measurement)."""
        await asyncio.gather(*(asyncio.to_thread(p.recv) for p in self._pipes))

    async def _ask(self, shard: int, command: tuple[Any, ...]) -> dict[str, Any]:
        pipe = self._pipes[shard]
        pipe.send(command)
        answer: dict[str, Any] = await asyncio.to_thread(pipe.recv)
        if "error" in answer:
            raise ConnectionError(f"a load-generator shard failed: {answer['error']}")
        return answer

    async def _every(self, commands: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
        return list(await asyncio.gather(*(self._ask(i, c) for i, c in enumerate(commands))))

    async def _all(self, commands: list[tuple[Any, ...]]) -> ShardResult:
        answers = await self._every(commands)
        return ShardResult(
            seconds=[s for a in answers for s in a["seconds"]],
            cpu_s=round(sum(a["cpu_s"] for a in answers), 2),
            retries=sum(a.get("retries", 0) for a in answers),
            phases=[tuple(p) for a in answers for p in a.get("phases", ())],
            messages=sum(a.get("messages", 0) for a in answers),
        )

    async def add(self, count: int) -> ShardResult:
        """Register `count` nodes, spread evenly, and open their polls."""
        shards = len(self._pipes)
        shares = [count // shards + (i < count % shards) for i in range(shards)]
        self.count += count
        return await self._all([("add", share) for share in shares])

    async def add_keyed(self, keys: list[str]) -> ShardResult:
        """Register one node per key in `keys` (each its own user's key),
        dealt round the shards, and open their polls."""
        shards = len(self._pipes)
        self.count += len(keys)
        return await self._all([("add", keys[i::shards]) for i in range(shards)])

    async def reconnect(self, concurrency: int | None = None) -> ShardResult:
        """Every node polls again (after a server restart), `concurrency` in
        flight over all shards (by default as many as registrations)."""
        per_shard = -(-concurrency // len(self._pipes)) if concurrency else None
        return await self._all([("reconnect", per_shard)] * len(self._pipes))

    # What the mesh measurements need: one node's doings, everyone's view.

    async def node(self, shard: int, index: int) -> NodeRef:
        answer = await self._ask(shard, ("node", index))
        return NodeRef(shard, answer["index"], answer["node_key"], answer["node_id"])

    async def new_node(self, shard: int = 0) -> NodeRef:
        """A node created in `shard`, its keys known, not yet registered."""
        answer = await self._ask(shard, ("new_node",))
        self.count += 1
        return NodeRef(shard, answer["index"], answer["node_key"], None)

    async def bring_up(self, ref: NodeRef) -> float:
        """Register `ref` and open its poll; seconds to its first map."""
        answer = await self._ask(ref.shard, ("bring_up", ref.index))
        seconds: float = answer["seconds"]
        return seconds

    async def set_endpoints(self, ref: NodeRef, endpoints: list[str]) -> None:
        await self._ask(ref.shard, ("set_endpoints", ref.index, endpoints))

    async def observe(
        self,
        watch: Watch,
        action: Callable[[], Awaitable[Any]],
        *,
        timeout: float,
        exclude: NodeRef | None = None,
        key: str | None = None,
    ) -> list[float]:
        """Seconds from the start of `action` until each client but `exclude`
        (and only those registered with `key`, if given) satisfies `watch`;
        raises TimeoutError naming how many never did. An action that returns
        `At` says when it really happened (as `Fleet.observe`)."""
        excluded = exclude.node_key if exclude is not None else None
        await self._every([("watch", watch, excluded, key)] * len(self._pipes))
        # From the action: arming the watches (a round trip to every shard, a
        # pass over its nodes) is the bench's own work, not the change's.
        start = self.clock()
        happened = await action()
        if isinstance(happened, At):
            start = happened.time
        answers = await self._every([("collect", timeout)] * len(self._pipes))
        missing = sum(a["missing"] for a in answers)
        total = sum(len(a["times"]) for a in answers) + missing
        if missing:
            raise TimeoutError(f"{missing} of {total} clients never saw the change")
        return [max(0.0, t - start) for a in answers for t in a["times"]]

    async def settled(self, peers: int, timeout: float) -> None:
        """Until every client holds `peers` peers (registrations raced first maps)."""
        await self.observe(Watch("holds_peers", (peers,)), _nothing, timeout=timeout)

    async def close(self) -> None:
        for pipe in self._pipes:
            try:
                pipe.send(("close",))
            except (BrokenPipeError, OSError):
                pass
        for proc in self._procs:
            await asyncio.to_thread(proc.join, 10)
            if proc.is_alive():
                proc.kill()


async def _nothing() -> None:
    await asyncio.sleep(0)


def _shard_main(
    pipe: Connection, server: ServerAddress, auth_key: str, prefix: str, concurrency: int
) -> None:
    async def main() -> None:
        fleet = Fleet(server, auth_key, hostname_prefix=prefix, concurrency=concurrency)
        await _Shard(fleet).run(pipe)

    tune_gc()
    warm_up()  # before "ready": one-time work is no registration's
    asyncio.run(main())


class _Shard:
    """A child process's side: one `Fleet`, a command at a time."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.watching: list[asyncio.Future[float]] = []

    async def run(self, pipe: Connection) -> None:
        pipe.send({"ready": True})
        try:
            while True:
                command = await asyncio.to_thread(pipe.recv)
                if command[0] == "close":
                    return
                cpu = time.process_time()
                try:
                    answer = await getattr(self, f"_{command[0]}")(*command[1:])
                except Exception as exc:  # reported to the parent, which stops the run
                    pipe.send({"error": f"{type(exc).__name__}: {exc}"})
                    continue
                pipe.send({**answer, "cpu_s": time.process_time() - cpu})
        finally:
            await self.fleet.close()

    def _mine(self, index: int) -> SimNode:
        return self.fleet.nodes[index]

    async def _add(self, count: int | list[str]) -> dict[str, Any]:
        """`count` nodes of the fleet's key, or one per key in a list."""
        before, applied = len(self.fleet.phases), self._applied()
        if isinstance(count, list):
            seconds = await self.fleet.add(len(count), count)
        else:
            seconds = await self.fleet.add(count)
        return {
            "seconds": seconds,
            "retries": sum(n.retries for n in self.fleet.nodes),
            "phases": self.fleet.phases[before:],
            "messages": self._applied() - applied,
        }

    def _applied(self) -> int:
        return sum(node.netmap.messages for node in self.fleet.nodes)

    async def _reconnect(self, concurrency: int | None) -> dict[str, Any]:
        seconds = await self.fleet.reconnect(self.fleet.nodes, concurrency=concurrency)
        return {"seconds": seconds, "retries": sum(n.retries for n in self.fleet.nodes)}

    async def _node(self, index: int) -> dict[str, Any]:
        node = self._mine(index)
        return {"index": node.index, "node_key": node.node_key, "node_id": node.node_id}

    async def _new_node(self) -> dict[str, Any]:
        return await self._node(self.fleet.new_node().index)

    async def _bring_up(self, index: int) -> dict[str, Any]:
        return {"seconds": await self.fleet.bring_up(self._mine(index))}

    async def _set_endpoints(self, index: int, endpoints: list[str]) -> dict[str, Any]:
        await self.fleet.set_endpoints(self._mine(index), endpoints)
        return {}

    async def _watch(self, watch: Watch, exclude: str | None, key: str | None) -> dict[str, Any]:
        now = self.fleet.clock()
        self.watching = [
            node.watch(watch.predicate(), now)
            for node in self.fleet.nodes
            if (key is None or node.auth_key == key)
            and node.stream is not None
            and node.node_key != exclude
        ]
        return {"watching": len(self.watching)}

    async def _collect(self, timeout: float) -> dict[str, Any]:
        futures, self.watching = self.watching, []
        if futures:
            _, pending = await asyncio.wait(futures, timeout=timeout)
            for future in pending:
                future.cancel()
        return {
            "times": [f.result() for f in futures if not f.cancelled()],
            "missing": sum(f.cancelled() for f in futures),
        }
