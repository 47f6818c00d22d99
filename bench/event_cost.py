"""Server CPU per runtime event at thousands of nodes, in process (no sockets):
one user per `GROUP` nodes under `autogroup:self`, every node with an open
session that has read its first map; then endpoint changes and joins, each
settled and every woken session stepped, as the stream's loop would.

    python -m bench.event_cost --nodes 2000 5000 [--profile DIR]

Prints CPU (process time) per endpoint change and per join; with `--profile`
writes the top functions of the events' window (not of the set-up).
"""

from __future__ import annotations

import argparse
import cProfile
import logging
import pstats
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from gitctl.policy import parse_policy
from server.protocol.keys import MachinePublic, NodePublic
from server.store import open_store
from server.store.model import Registration
from server.tailnet import NodeRegistry, Tailnet, TailnetSource, running_tailnet
from server.tailnet.handle import SessionHandle
from server.tailnet.session import MapSession
from server.wire import DerpRegion

__all__ = ["GROUP", "T0", "register_node", "run"]

GROUP = 25
T0 = datetime(2026, 1, 1, tzinfo=UTC)
SELF_RULE = {"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self:*"]}


def _tailnet(nodes: int) -> tuple[NodeRegistry, Tailnet, list[int]]:
    users = {f"u{g}": (f"u{g}@example.com", f"U{g}") for g in range(nodes // GROUP + 2)}
    source = TailnetSource(
        id="groups",
        domain="tailnet.example",
        dns_config={"Domains": ["tailnet.example"], "Proxied": True},
        users=users,
        policy=parse_policy({"acls": [SELF_RULE]}),
    )
    registry, tailnet = running_tailnet(
        open_store(Path(":memory:")),
        source,
        derp_regions=[DerpRegion(999, "test", "test", "127.0.0.1", 3340, 0)],
        log=logging.getLogger("bench"),
        clock=lambda: T0,
    )
    ids = [register_node(registry, n + 1, f"u{n // GROUP}") for n in range(nodes)]
    return registry, tailnet, ids


def register_node(registry: NodeRegistry, n: int, user: str) -> int:
    """Node `n` of `user`, with a key expiry as logins give them (spread over 97 days)."""
    raw = n.to_bytes(32, "big")
    return registry.register(
        Registration(
            machine_key=MachinePublic(raw),
            node_key=NodePublic(raw),
            hostname=f"n{n}",
            user=user,
            tags=(),
            now=T0,
            approved=True,
            key_expiry=T0 + timedelta(days=180 + n % 97),  # as logins give them: spread
        )
    ).id


class _Streams:
    def __init__(self, tailnet: Tailnet) -> None:
        self.tailnet = tailnet
        self.open: dict[int, tuple[SessionHandle, MapSession]] = {}
        self.steps = 0
        self.now = T0  # a second passes per event: sessions look for expired peers

    def connect(self, registry: NodeRegistry, node_id: int) -> None:
        registry.connected(node_id)
        self.tailnet.settle()
        handle = self.tailnet.open_session(node_id)
        self.open[node_id] = (handle, MapSession(node_id))
        self.drain([node_id])

    def drain(self, node_ids: list[int] | None = None) -> None:
        self.tailnet.settle()
        ctx = self.tailnet.context
        for node_id in node_ids if node_ids is not None else list(self.open):
            handle, session = self.open[node_id]
            if handle.wake.is_set() or handle.full or handle.top or handle.peers:
                session.step(ctx, handle.take_wake(), self.now)
                self.steps += 1


def run(nodes: int, moves: int, joins: int, profile: Path | None) -> dict[str, float]:
    registry, tailnet, ids = _tailnet(nodes)
    streams = _Streams(tailnet)
    for node_id in ids:
        streams.connect(registry, node_id)
    streams.drain()
    groups = [ids[g : g + GROUP] for g in range(0, len(ids), GROUP)]
    movers = ids[:: max(1, len(ids) // moves)][:moves]
    prof = cProfile.Profile() if profile else None

    group_of = {node_id: group for group in groups for node_id in group}

    def viewers(node_id: int) -> list[int]:
        return group_of[node_id]

    # One change first, untimed: the first session woken with time passed
    # builds the key-expiry index (a pass over every node, once per server,
    # 21 ms at 5,000), which would otherwise be charged to the first change.
    warm = ids[-1]
    streams.now += timedelta(seconds=1)
    node = registry.get(warm)
    assert node is not None
    registry.update_from_map(node, now=T0, endpoints=("127.1.0.1:41641",))
    streams.drain(viewers(warm))
    if prof:
        prof.enable()
    t = time.process_time()
    for n, node_id in enumerate(movers):
        node = registry.get(node_id)
        assert node is not None
        streams.now += timedelta(seconds=1)
        registry.update_from_map(node, now=T0, endpoints=(f"127.0.{n // 250}.{n % 250 + 1}:41641",))
        streams.drain(viewers(node_id))
    moved = time.process_time() - t
    t = time.process_time()
    for n in range(joins):
        streams.now += timedelta(seconds=1)
        new = register_node(registry, nodes + n + 1, f"u{n}")
        streams.connect(registry, new)
        streams.drain(viewers(ids[n * GROUP]))
    joined = time.process_time() - t
    if prof:
        prof.disable()
        assert profile is not None
        profile.mkdir(parents=True, exist_ok=True)
        with (profile / f"event-cost-{nodes}.txt").open("w") as out:
            pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(45)
            pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(25)
    return {
        "nodes": nodes,
        "endpoint_ms": round(moved / moves * 1e3, 3),
        "endpoint_us_per_peer": round(moved / moves / (GROUP - 1) * 1e6, 1),
        "join_ms": round(joined / joins * 1e3, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nodes", type=int, nargs="+", default=[2000])
    parser.add_argument("--moves", type=int, default=20)
    parser.add_argument("--joins", type=int, default=5)
    parser.add_argument("--profile", type=Path)
    args = parser.parse_args()
    for nodes in args.nodes:
        print(run(nodes, args.moves, args.joins, args.profile), flush=True)


if __name__ == "__main__":
    main()
