"""The simulated clients split over several processes, for when one Python
process cannot keep up with the server (thousands of Noise handshakes and
zstd streams on one core).

Each shard is a child process running its own `Fleet` on its own event loop;
the parent sends it a command over a pipe and gets back what its clients
observed, plus the CPU seconds the shard used, so a run can say whether the
load generator set the pace. Only what the sparse runs need is here:
registering nodes and reconnecting all of them after a server restart, and
watching one change (a commit, a join, an endpoint change) across the
clients of every shard (`ShardedFleet.observe`: each shard arms its clients,
the parent acts, each shard reports when its clients saw it; the shards' and
the parent's loop clocks are the same CLOCK_MONOTONIC).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from bench.loadgen.client import ServerAddress
from bench.loadgen.fleet import At, Fleet, Predicate, has_peer_key, peer_endpoints, top_mentions

__all__ = ["ShardResult", "ShardedFleet", "Watch", "predicate"]

# What a shard's clients wait for, sent over the pipe: ("top_mentions", key,
# marker), ("has_peer_key", node key) or ("peer_endpoints", node id, endpoints).
Watch = tuple[Any, ...]


def predicate(watch: Watch) -> Predicate:
    kind, *args = watch
    makers: dict[str, Any] = {
        "top_mentions": top_mentions,
        "has_peer_key": has_peer_key,
        "peer_endpoints": peer_endpoints,
    }
    made: Predicate = makers[kind](*args)
    return made


@dataclass(frozen=True, slots=True)
class ShardResult:
    """What every shard's clients observed for one command, merged."""

    seconds: list[float]  # per node: until its first map
    cpu_s: float  # the shards' CPU over the command, summed
    retries: int = 0


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

    async def ready(self) -> None:
        """Wait until every shard has started (imports take a second or so;
        not part of any measurement)."""
        await asyncio.gather(*(asyncio.to_thread(p.recv) for p in self._pipes))

    async def _all(self, commands: list[tuple[Any, ...]]) -> ShardResult:
        answers = await self._ask(commands)
        return ShardResult(
            seconds=[s for a in answers for s in a["seconds"]],
            cpu_s=round(sum(a["cpu_s"] for a in answers), 2),
            retries=sum(a.get("retries", 0) for a in answers),
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

    async def observe(
        self,
        watch: Watch,
        action: Callable[[], Awaitable[Any]],
        *,
        key: str | None = None,
        timeout: float,
    ) -> list[float]:
        """`Fleet.observe` over every shard's nodes (only those registered
        with `key`, if given): seconds from the action (or the `At` it
        returns) until each saw `watch`."""
        answers = await self._ask([("watch", watch, key)] * len(self._pipes))
        armed = sum(a["armed"] for a in answers)
        loop = asyncio.get_running_loop()
        start = loop.time()
        happened = await action()
        if isinstance(happened, At):
            start = happened.time
        answers = await self._ask([("collect", timeout)] * len(self._pipes))
        times = [t for a in answers for t in a["times"]]
        assert len(times) == armed, "every armed client answers"
        return [max(0.0, t - start) for t in times]

    async def _ask(self, commands: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
        """One command to each shard; their answers (ConnectionError if one failed)."""
        for pipe, command in zip(self._pipes, commands, strict=True):
            pipe.send(command)
        answers = await asyncio.gather(*(asyncio.to_thread(p.recv) for p in self._pipes))
        for answer in answers:
            if "error" in answer:
                raise ConnectionError(f"a load-generator shard failed: {answer['error']}")
        return list(answers)

    async def reconnect(self, concurrency: int | None = None) -> ShardResult:
        """Every node polls again (after a server restart), `concurrency` in
        flight over all shards (by default as many as registrations)."""
        per_shard = -(-concurrency // len(self._pipes)) if concurrency else None
        return await self._all([("reconnect", per_shard)] * len(self._pipes))

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


def _shard_main(
    pipe: Connection, server: ServerAddress, auth_key: str, prefix: str, concurrency: int
) -> None:
    asyncio.run(_shard(pipe, server, auth_key, prefix, concurrency))


async def _shard(
    pipe: Connection, server: ServerAddress, auth_key: str, prefix: str, concurrency: int
) -> None:
    fleet = Fleet(server, auth_key, hostname_prefix=prefix, concurrency=concurrency)
    pipe.send({"ready": True})
    watching: list[asyncio.Future[float]] = []
    try:
        while True:
            command = await asyncio.to_thread(pipe.recv)
            if command[0] == "close":
                return
            if command[0] in ("watch", "collect"):
                watching = await _watch_or_collect(pipe, fleet, command, watching)
                continue
            cpu = time.process_time()
            try:
                if command[0] == "add" and isinstance(command[1], list):
                    seconds = await fleet.add(len(command[1]), command[1])
                elif command[0] == "add":
                    seconds = await fleet.add(command[1])
                else:
                    seconds = await fleet.reconnect(fleet.nodes, concurrency=command[1])
            except Exception as exc:  # reported to the parent, which stops the run
                pipe.send({"error": f"{type(exc).__name__}: {exc}"})
                continue
            pipe.send(
                {
                    "seconds": seconds,
                    "cpu_s": time.process_time() - cpu,
                    "retries": sum(n.retries for n in fleet.nodes),
                }
            )
    finally:
        await fleet.close()


async def _watch_or_collect(
    pipe: Connection,
    fleet: Fleet,
    command: tuple[Any, ...],
    watching: list[asyncio.Future[float]],
) -> list[asyncio.Future[float]]:
    """("watch", watch, key): arm the nodes (of `key`, or all); ("collect",
    timeout): send when each armed node saw it (loop clock times)."""
    if command[0] == "watch":
        _, watch, key = command
        now = fleet.clock()
        chosen = [n for n in fleet.nodes if key is None or n.auth_key == key]
        watching = [node.watch(predicate(watch), now) for node in chosen]
        pipe.send({"armed": len(watching)})
        return watching
    done, pending = await asyncio.wait(watching, timeout=command[1]) if watching else ((), ())
    for future in pending:
        future.cancel()
    if pending:
        pipe.send({"error": f"{len(pending)} of {len(watching)} clients never saw the change"})
    else:
        pipe.send({"times": [future.result() for future in watching]})
    return []
