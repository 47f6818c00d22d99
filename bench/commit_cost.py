"""Server CPU per policy commit at thousands of nodes, in process (no sockets),
in bench_socket's two commit topologies (bench/sparse_events.py):

- sparse: one user, no rules; each commit adds or moves a rule from
  192.0.2.0/24 to every node (every packet filter changes, no peer does);
- groups: one user per `GROUP` nodes under `autogroup:self`; each commit
  adds or moves a port on every node's self rule.

Every node has an open session that has read its first map; then each commit
is compiled, swapped in and every woken session stepped and its message
framed (zstd), as the streams' deliveries would.

    python -m bench.commit_cost --sparse 5000 --groups 5000 [--commits 3] [--profile DIR]

Prints process CPU per commit (compile and swap apart from the sessions'
steps) and per woken session; with `--profile` writes the top functions of
the commits' window (not of the set-up).
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import logging
import pstats
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from bench.event_cost import GROUP, T0, register_node
from gitctl.policy import parse_policy
from server.gcpolicy import GcPolicy
from server.protocol.mapframe import MapFrameEncoder
from server.store import open_store
from server.tailnet import NodeRegistry, Tailnet, TailnetSource, running_tailnet
from server.tailnet.handle import SessionHandle
from server.tailnet.session import MapSession
from server.wire import DerpRegion

__all__ = ["run"]

CONNECT_BATCH = 250
MARKER_PORT = 47113
SELF_RULE = {"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self:*"]}


def policy_of(kind: str, port: int | None) -> dict[str, Any]:
    """The policy served before the commits (`port` None), and at each commit."""
    if kind == "groups":
        rules: list[dict[str, Any]] = [SELF_RULE]
        if port is not None:
            rules.append({**SELF_RULE, "dst": [f"autogroup:self:{port}"]})
        return {"acls": rules}
    if port is None:
        return {"acls": []}
    return {"acls": [{"action": "accept", "src": ["192.0.2.0/24"], "dst": [f"*:{port}"]}]}


def _source(kind: str, users: dict[str, tuple[str, str]], port: int | None) -> TailnetSource:
    return TailnetSource(
        id=f"{kind}-{port}",
        domain="tailnet.example",
        dns_config={"Domains": ["tailnet.example"], "Proxied": True},
        users=users,
        policy=parse_policy(policy_of(kind, port)),
    )


class _Streams:
    """Every node's session, stepped as its stream would step it."""

    def __init__(self, tailnet: Tailnet) -> None:
        self.tailnet = tailnet
        self.open: dict[int, tuple[SessionHandle, MapSession]] = {}
        self.encoder = MapFrameEncoder()
        self.now = T0

    def connect_all(self, registry: NodeRegistry, node_ids: list[int]) -> None:
        """A batch at a time, every session caught up after each, as clients
        registering over a while are: sessions are then behind the change
        log by the registrations after theirs, as in a socket run."""
        for at in range(0, len(node_ids), CONNECT_BATCH):
            batch = node_ids[at : at + CONNECT_BATCH]
            for node_id in batch:
                registry.connected(node_id)
            self.tailnet.settle()
            for node_id in batch:
                self.open[node_id] = (self.tailnet.open_session(node_id), MapSession(node_id))
            self.drain()

    def drain(self) -> tuple[int, int]:
        """(sessions stepped, messages framed)."""
        self.tailnet.settle()
        ctx = self.tailnet.context
        stepped = sent = 0
        for handle, session in self.open.values():
            if handle.wake.is_set() or handle.full or handle.top or handle.peers:
                msg = session.step(ctx, handle.take_wake(), self.now)
                stepped += 1
                if msg is not None:
                    self.encoder.encode(msg)
                    sent += 1
        return stepped, sent


def run(kind: str, nodes: int, commits: int, profile: Path | None) -> dict[str, Any]:
    per_user = GROUP if kind == "groups" else nodes
    names = [f"u{g}" for g in range(-(-nodes // per_user))]
    users = {u: (f"{u}@example.com", u.upper()) for u in names}
    registry, tailnet = running_tailnet(
        open_store(Path(":memory:")),
        _source(kind, users, None),
        derp_regions=[DerpRegion(999, "test", "test", "127.0.0.1", 3340, 0)],
        log=logging.getLogger("bench"),
        clock=lambda: T0,
        gc_policy=(gc_policy := GcPolicy()),
    )
    ids = [register_node(registry, n + 1, names[n // per_user]) for n in range(nodes)]
    streams = _Streams(tailnet)
    streams.connect_all(registry, ids)
    gc.collect()
    gc.freeze()  # as `tailnetd serve` does after start-up
    prof = cProfile.Profile(time.process_time) if profile else None
    swap = steps = 0.0
    stepped = sent = 0
    each: list[float] = []
    for n in range(commits):
        source = _source(kind, users, MARKER_PORT + n)
        streams.now += timedelta(seconds=1)
        if prof:
            prof.enable()
        t = time.process_time()
        gc_policy.hold()  # as the server's fan-out holds it till drained
        tailnet.swap_source(source)
        t1 = time.process_time()
        woke, framed = streams.drain()
        gc_policy.release()
        t2 = time.process_time()
        if prof:
            prof.disable()
        swap, steps = swap + t1 - t, steps + t2 - t1
        each.append(round((t2 - t) * 1e3, 1))
        stepped, sent = stepped + woke, sent + framed
    if prof:
        assert profile is not None
        profile.mkdir(parents=True, exist_ok=True)
        prof.dump_stats(profile / f"commit-{kind}-{nodes}.prof")
        with (profile / f"commit-{kind}-{nodes}.txt").open("w") as out:
            pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(50)
            pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(30)
    return {
        "kind": kind,
        "nodes": nodes,
        "commits": commits,
        "commit_cpu_ms": round((swap + steps) / commits * 1e3, 1),
        "swap_cpu_ms": round(swap / commits * 1e3, 1),
        "steps_cpu_ms": round(steps / commits * 1e3, 1),
        "sessions_woken": stepped // commits,
        "messages": sent // commits,
        "us_per_session": round((swap + steps) / max(1, stepped) * 1e6, 1),
        "each_commit_cpu_ms": each,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sparse", type=int, nargs="*", default=[5000])
    parser.add_argument("--groups", type=int, nargs="*", default=[5000])
    parser.add_argument("--commits", type=int, default=3)
    parser.add_argument("--profile", type=Path)
    args = parser.parse_args()
    for kind, sizes in (("sparse", args.sparse), ("groups", args.groups)):
        for nodes in sizes:
            print(json.dumps(run(kind, nodes, args.commits, args.profile)), flush=True)


if __name__ == "__main__":
    main()
