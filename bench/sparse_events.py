"""Change -> every client that has it, in sparse runs at thousands of nodes,
whose clients may be spread over load-generator shards.

Two topologies (bench_socket's `--sparse` and `--groups`):

- sparse: one user, a policy that gives nodes no peers. A commit adds a rule
  from a documentation range (192.0.2.0/24, no node's address) to every node:
  every node's packet filter changes, no node gains a peer.
- groups: one user per `GROUP` nodes, `autogroup:self` (each node sees the
  other nodes of its user). A commit adds a port to every node's self rule.
  Joins and endpoint changes are measured here: a newcomer joins a group and
  its group's nodes must see it; then its endpoints change and they must see
  that. Newcomers run in this process; the observers are wherever they are.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any

from bench.loadgen.fleet import At, Fleet, Watch
from bench.loadgen.local import (
    LocalServer,
    minor_faults,
    softirq_cpu_seconds,
    thread_cpu_seconds,
)
from bench.loadgen.shards import ShardedFleet
from bench.loadgen.stats import summary
from server.admin_client import SocketTarget, call

__all__ = [
    "GROUP",
    "commit_event",
    "group_events",
    "group_files",
    "sparse_commit_policy",
    "user_keys",
]

GROUP = 25  # nodes per user in a groups run: each sees the other 24
JOINS = 5  # newcomers, each into its own group; their observers are pooled
MOVES = 4  # endpoint changes per newcomer
MARKER_PORT = 47113
TIMEOUT = 300.0
SELF_RULE = {"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self:*"]}


def sparse_commit_policy(port: int = MARKER_PORT) -> str:
    rule = {"action": "accept", "src": ["192.0.2.0/24"], "dst": [f"*:{port}"]}
    return json.dumps({"acls": [rule]}) + "\n"


def group_policy(port: int | None = None) -> str:
    rules: list[dict[str, Any]] = [SELF_RULE]
    if port is not None:
        rules.append({**SELF_RULE, "dst": [f"autogroup:self:{port}"]})
    return json.dumps({"acls": rules}) + "\n"


def group_files(nodes: int) -> tuple[dict[str, str], list[str]]:
    """The repo's files for `nodes` nodes in groups of `GROUP`, and the users."""
    users = [f"u{n}" for n in range(max(1, -(-nodes // GROUP)))]
    lines = ["users:"] + [f"  - {{name: {u}, email: {u}@example.com}}" for u in users]
    return {"users.yaml": "\n".join(lines) + "\n", "policy.hujson": group_policy()}, users


def user_keys(server: LocalServer, users: list[str]) -> list[str]:
    """A reusable pre-auth key per user, over the admin socket (one process,
    not one `tailnetd keys create` per user)."""
    target = SocketTarget(server.process.data / "tailnetd.sock")
    body = {"reusable": True, "ephemeral": False, "tags": [], "expiration": None}
    return [
        str(call(target, "POST", "/api/v1/preauthkeys", {**body, "user": u})["key"]) for u in users
    ]


async def observe(
    fleet: Fleet | ShardedFleet,
    watch: Watch,
    action: Any,
    *,
    key: str | None = None,
) -> list[float]:
    """Seconds until each client (of `key`'s user, if given) saw `watch`."""
    if isinstance(fleet, ShardedFleet):
        return await fleet.observe(watch, action, key=key, timeout=TIMEOUT)
    chosen = [n for n in fleet.nodes if key is None or n.auth_key == key]
    made = watch.predicate()
    return await fleet.observe(chosen, lambda _: made, action, timeout=TIMEOUT)


async def commit_event(
    server: LocalServer, fleet: Fleet | ShardedFleet, policy: str
) -> dict[str, Any]:
    """A commit of `policy` (which names MARKER_PORT) until every client has it."""
    loop = asyncio.get_running_loop()

    async def committed() -> At:
        await asyncio.to_thread(server.commit, {"policy.hujson": policy}, "one more rule")
        return At(loop.time())

    served, threads = server.cpu_seconds(), thread_cpu_seconds(server.pid)
    faults, softirq = minor_faults(server.pid), softirq_cpu_seconds()
    seconds = await observe(
        fleet, Watch("top_mentions", ("PacketFilter", str(MARKER_PORT))), committed
    )
    cpu_ms = round((server.cpu_seconds() - served) * 1000, 1)
    after = thread_cpu_seconds(server.pid)
    loop_ms = round((after.get(server.pid, 0.0) - threads.get(server.pid, 0.0)) * 1000, 1)
    return {
        "commit": summary(seconds),
        "commit_server_cpu_ms": cpu_ms,
        # The event loop's share (the fan-out, the git read); the rest is
        # worker threads (the compile) and threads that ended meanwhile.
        "commit_server_loop_cpu_ms": loop_ms,
        "commit_server_minor_faults": minor_faults(server.pid) - faults,
        # Kernel work a change may move off the server's account (machine-wide).
        "commit_softirq_cpu_ms": round((softirq_cpu_seconds() - softirq) * 1000, 1),
    }


@dataclass
class _Tally:
    joins: list[float] = field(default_factory=list)
    moves: list[float] = field(default_factory=list)
    join_cpu: float = 0.0
    move_cpu: float = 0.0
    # Each change's server CPU (s): the sum alone hid whether one change (the
    # first after a join, a heap trim in its window) made the groups spread.
    move_cpus: list[float] = field(default_factory=list)


async def group_events(
    server: LocalServer,
    fleet: Fleet | ShardedFleet,
    keys: list[str],
    *,
    profile_moves: bool = False,
) -> dict[str, Any]:
    """JOINS newcomers, each into its own group, until the group has it;
    then MOVES endpoint changes each, until the group has each.
    `profile_moves`: the server (under bench/windowprof.py) is profiled over
    the endpoint changes alone."""
    newcomers = Fleet(server.address, keys[0])
    tally = _Tally()
    count = min(JOINS, len(keys))
    try:
        for group in range(count):
            await _join_and_move(server, fleet, newcomers, keys[group], group, tally, profile_moves)
    finally:
        await newcomers.close()
    return {
        "topology": f"groups of {GROUP} (autogroup:self, one user per group)",
        "join": summary(tally.joins),
        "join_server_cpu_ms": round(tally.join_cpu / count * 1000, 1),
        "endpoint_change": summary(tally.moves),
        # A clock tick is 10 ms: the changes' CPU summed, then divided by every peer told.
        "endpoint_server_cpu_us_per_peer": round(tally.move_cpu / len(tally.moves) * 1e6, 1),
        "endpoint_server_cpu_us_per_change": [round(c * 1e6) for c in tally.move_cpus],
    }


async def _join_and_move(
    server: LocalServer,
    fleet: Fleet | ShardedFleet,
    newcomers: Fleet,
    key: str,
    group: int,
    tally: _Tally,
    profile_moves: bool = False,
) -> None:
    node = newcomers.new_node(key)
    served = server.cpu_seconds()
    tally.joins += await observe(
        fleet, Watch("has_peer_key", (node.node_key,)), lambda: newcomers.bring_up(node), key=key
    )
    tally.join_cpu += server.cpu_seconds() - served
    node_id = node.node_id or 0
    for n in range(MOVES):
        endpoints = [f"127.0.{group}.{n + 1}:41641", "127.0.0.2:41641"]

        def moved(endpoints: list[str] = endpoints) -> Awaitable[None]:
            return newcomers.set_endpoints(node, endpoints)

        if profile_moves:
            os.kill(server.pid, signal.SIGUSR1)
        served = server.cpu_seconds()
        tally.moves += await observe(
            fleet, Watch("peer_endpoints", (node_id, endpoints)), moved, key=key
        )
        cpu = server.cpu_seconds() - served
        tally.move_cpu += cpu
        tally.move_cpus.append(cpu)
        if profile_moves:  # each stop writes the stats so far (the profile adds up)
            os.kill(server.pid, signal.SIGUSR1)
            await asyncio.sleep(1)
