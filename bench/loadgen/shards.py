"""The simulated clients split over several processes, for when one Python
process cannot keep up with the server (thousands of Noise handshakes and
zstd streams on one core).

Each shard is a child process running its own `Fleet` on its own event loop;
the parent sends it a command over a pipe and gets back what its clients
observed, plus the CPU seconds the shard used, so a run can say whether the
load generator set the pace. Only what the sparse runs need is here:
registering nodes and reconnecting all of them after a server restart.
Measurements that watch one change across every client (commit, join,
endpoints) stay in one process (`Fleet.observe`).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from bench.loadgen.client import ServerAddress
from bench.loadgen.fleet import Fleet

__all__ = ["ShardedFleet", "ShardResult"]


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
        for pipe, command in zip(self._pipes, commands, strict=True):
            pipe.send(command)
        answers = await asyncio.gather(*(asyncio.to_thread(p.recv) for p in self._pipes))
        for answer in answers:
            if "error" in answer:
                raise ConnectionError(f"a load-generator shard failed: {answer['error']}")
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
    try:
        while True:
            command = await asyncio.to_thread(pipe.recv)
            if command[0] == "close":
                return
            cpu = time.process_time()
            try:
                if command[0] == "add":
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
