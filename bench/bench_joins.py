"""What one join and one leave cost the server at N nodes (issue 11: a join
costs what it changes, not what the tailnet holds).

Run: python -m bench.bench_joins [--nodes 5000] [--joins 100] [--leaves 20] [--batch K]
[--groups] [--profile OUT]

N nodes of one user under the socket benchmark's sparse policy (`{"acls": []}`)
in a real sqlite store, each with an open session that has read its view; then
joins one by one (registered, settled, its session opened) and leaves one by
one (removed, settled). Prints the server's CPU per join and per leave
(`time.process_time()`), leaving out the pump that steps every session after
each event (a benchmark's cost, not the server's: the server's sessions wait
on their events). `--batch K`: K joins share a settle, as concurrent
registrations do on the server's loop (the socket bench's 8 in flight settle
~2-6 at a time); the figure is still per join.

`--groups`: users of 25 nodes under `autogroup:self` (the socket bench's groups
run) instead, nodes dealt to users in turn and each newcomer to the next user,
so a join changes its ~24 fellows' filters and peers. Their sessions' steps are
then the server's work too: timed apart (`steps`), over the woken sessions only.
"""

from __future__ import annotations

import argparse
import cProfile
import logging
import pstats
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from bench.bench_compile import make_node
from bench.bench_tailnet import Pump, fill, newcomer, source
from bench.sparse_events import GROUP, SELF_RULE
from gitctl.policy import parse_policy
from server.store import open_store
from server.tailnet import running_tailnet
from server.wire import DerpRegion, stable_user_id

NOW = datetime(2026, 1, 1, tzinfo=UTC)
GROUP_POLICY = {"acls": [SELF_RULE]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=5000)
    parser.add_argument("--joins", type=int, default=100)
    parser.add_argument("--leaves", type=int, default=20)
    parser.add_argument("--batch", type=int, default=1, help="joins per settle")
    parser.add_argument("--groups", action="store_true", help="users of 25, autogroup:self")
    parser.add_argument("--profile", type=Path, help="cProfile the joins and leaves, stats here")
    args = parser.parse_args()
    users = [(stable_user_id("alice"), "alice", "alice@example.com")]
    policy = parse_policy({"acls": []})
    if args.groups:
        names = [f"u{n}" for n in range(max(1, -(-(args.nodes + args.joins) // GROUP)))]
        users = [(stable_user_id(u), u, f"{u}@example.com") for u in names]
        policy = parse_policy(GROUP_POLICY)
    profiler = cProfile.Profile() if args.profile else None
    deferred: list[Callable[[], object]] = []

    def later(fn: Callable[[], object]) -> bool:
        deferred.append(fn)
        return True

    def run_deferred() -> None:
        while deferred:
            deferred.pop(0)()

    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(Path(tmp) / "bench.sqlite")
        nodes = [
            replace(make_node(i, users, ["tag:t"]), user=users[i % len(users)][1], tags=())
            for i in range(1, args.nodes + 1)
        ]
        fill(store, nodes)
        registry, tailnet = running_tailnet(
            store,
            source(policy, users, "groups" if args.groups else "sparse"),
            derp_regions=[DerpRegion(999, "tailnetd", "tailnetd", "127.0.0.1", 8080, 3478)],
            log=logging.getLogger("bench"),
            clock=lambda: NOW,
            # One join, one settle; or, batched, what the loop runs once the batch is in.
            defer=(lambda fn: False) if args.batch == 1 else later,
        )
        pump = TimedPump(registry, tailnet)
        for node in store.list_nodes():
            pump.open(node.id)
        pump.run()

        def timed(event: Callable[[], object]) -> float:
            start = time.process_time()
            if profiler is not None:
                profiler.enable()
            event()
            if profiler is not None:
                profiler.disable()
            spent = time.process_time() - start
            if profiler is not None:
                profiler.enable()
            pump.run()
            if profiler is not None:
                profiler.disable()
            return spent

        def user_of(k: int) -> str:
            return users[(args.nodes + 1 + k) % len(users)][1]

        def join(k: int) -> None:
            pump.open(registry.register(newcomer(1_000_000 + k, f"newcomer{k}", user_of(k))).id)

        def joins_settled(first: int) -> None:
            ids = [
                registry.register(newcomer(1_000_000 + k, f"newcomer{k}", user_of(k))).id
                for k in range(first, first + args.batch)
            ]
            run_deferred()
            for node_id in ids:
                pump.open(node_id)
            run_deferred()

        run_deferred()
        pump.run()  # the opening online wave, deferred in a batched run: not a join's
        pump.steps = pump.woken = 0
        if args.batch == 1:
            joins = [timed(lambda k=k: join(k)) for k in range(args.joins)]
        else:
            batches = range(0, args.joins, args.batch)
            joins = [timed(lambda k=k: joins_settled(k)) / args.batch for k in batches]
        run_deferred()
        steps, woken = pump.steps, pump.woken
        ids = [n.id for n in store.list_nodes()][: args.leaves]
        leaves = [timed(lambda i=i: (registry.remove(i), run_deferred())) for i in ids]
        print(
            f"{args.nodes} nodes: {sum(joins) / len(joins) * 1000:.2f} ms server CPU per join "
            f"({len(joins)}), {sum(leaves) / max(1, len(leaves)) * 1000:.2f} ms per leave "
            f"({len(leaves)})"
        )
        if args.groups:
            print(
                f"  + {steps / args.joins * 1000:.2f} ms a join stepping its "
                f"{woken / args.joins:.1f} woken sessions (and encoding their messages)"
            )
        if profiler is not None and args.profile is not None:
            with args.profile.open("w") as out:
                stats = pstats.Stats(profiler, stream=out)
                stats.sort_stats("cumulative").print_stats(40)
                stats.sort_stats("tottime").print_stats(25)


class TimedPump(Pump):
    """`Pump`, with the CPU of the woken sessions' steps summed (`steps`)."""

    steps = 0.0
    woken = 0

    def run(self) -> None:
        ctx = self.tailnet.context
        clock = time.process_time
        for handle, session, encoder in self.sessions.values():
            wake = handle.take_wake()
            if not (wake.full or wake.top or wake.peers):
                continue
            start = clock()
            msg = session.step(ctx, wake, NOW) if session.serves(ctx) else None
            if msg is not None:
                encoder.encode(msg)
            self.steps += clock() - start
            self.woken += 1


if __name__ == "__main__":
    main()
