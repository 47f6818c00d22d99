"""What runtime events cost a server carrying N streaming nodes.

Run: python -m bench.bench_tailnet [--nodes 1000] [--rules 500] [--allow-all] [--repeat 1]
     python -m bench.bench_tailnet --nodes 50000 --per-user 200 [--json OUT]   (the moonshot)
     [--gc-freeze]: collect and freeze once the tailnet is built, as the server does
     [--gc-policy]: and the server's GcPolicy through every event (server/gcpolicy.py)

Builds a real sqlite store with N nodes, the server's Tailnet with a policy,
and one map session per node (no sockets: this measures the server's own
work, not the kernel's). Then it times:
* connect storm: every node's first full MapResponse (JSON + zstd);
* endpoint change: one node's endpoints change, every affected session sends its delta;
* node join: a new node registers, every affected session sends its delta;
* 20 joins at once: registrations in one burst on an event loop, which share
  one recompile (--no-coalesce: one each, as before);
* policy commit: a new snapshot is swapped in, every session sends its delta;
* --per-user K: another shape, users of K nodes each under `autogroup:self`
  (every node sees the K-1 others of its user, 50,000 nodes = 250 users x
  200); a policy commit changes every node's filter. Each row also says when
  the last session had its message (p50/p99 over sessions, in the order the
  pump serves them: one process, one core);
* commit from git: the same, starting from a git commit of tailnet.d (read,
  validated, policy tests run, compiled, swapped in, every delta sent): what
  a pull request's merge costs before every client has it.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import resource
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import git

from bench.bench_compile import make_node, synthetic
from gitctl.policy import Policy, parse_policy
from gitctl.snapshot import ALLOW_ALL
from server.gcpolicy import GcPolicy
from server.protocol.keys import DiscoPublic, MachinePublic, NodePublic
from server.protocol.mapframe import MapFrameEncoder
from server.sources.repo import SnapshotRepo
from server.store import open_store
from server.store.interface import Store
from server.store.model import Node, Registration
from server.tailnet import NodeRegistry, SessionHandle, Tailnet, TailnetSource, running_tailnet
from server.tailnet.hub import COALESCE_SECONDS, defer_on_loop
from server.tailnet.session import MapSession
from server.wire import DerpRegion, stable_user_id

NOW = datetime(2026, 1, 1, tzinfo=UTC)
BURST = 20  # registrations arriving together (a connect storm's slice)


def per_user(nodes: int, per: int) -> tuple[dict[str, Any], list[Node], list[tuple[int, str, str]]]:
    """`nodes` untagged nodes, `per` to each user; each node sees its user's others."""
    n_users = max(2, nodes // per)
    users = [(stable_user_id(f"u{i}"), f"u{i}", f"u{i}@example.com") for i in range(n_users)]
    # make_node tags every fourth node: give it a user instead.
    registry = [
        replace(make_node(i, users, ["tag:t"]), user=users[i % n_users][1], tags=())
        for i in range(1, nodes + 1)
    ]
    doc = {"acls": [{"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self:*"]}]}
    return doc, registry, users


def _self_ports(doc: dict[str, Any], ports: str) -> dict[str, Any]:
    return {"acls": [dict(doc["acls"][0], dst=[f"autogroup:self:{ports}"])]}


def source(policy: Policy, users: list[tuple[int, str, str]], sid: str) -> TailnetSource:
    return TailnetSource(
        id=sid,
        domain="tailnet.example",
        dns_config={"Proxied": True, "Domains": ["tailnet.example"]},
        users={name: (email, name) for _, name, email in users},
        policy=policy,
    )


class GitTailnet:
    """A git work tree holding the synthetic tailnet as tailnet.d files."""

    def __init__(self, path: Path, doc: Any, users: list[tuple[int, str, str]]) -> None:
        self.path = path
        (path / "tailnet.d").mkdir(parents=True)
        (path / "tailnet.d/users.yaml").write_text(
            "users:\n" + "".join(f"  - {{name: {n}, email: {e}}}\n" for _, n, e in users)
        )
        self.git = git.Repo.init(path)
        self.commit(doc, "synthetic tailnet")
        self.snapshots = SnapshotRepo(path)

    def commit(self, doc: Any, message: str) -> str:
        (self.path / "tailnet.d/policy.hujson").write_text(json.dumps(doc, indent=1))
        self.git.index.add(["tailnet.d/users.yaml", "tailnet.d/policy.hujson"])
        actor = git.Actor("bench", "bench@example.com")
        return str(self.git.index.commit(message, author=actor, committer=actor).hexsha)


def serve_commit(tailnet: Tailnet, repo: GitTailnet, revision: str) -> None:
    """What the server does with a new commit (server/app.py on_revision)."""
    checked = repo.snapshots.check(revision)
    snap, errors = checked.snapshot, checked.errors
    assert snap is not None, errors
    tailnet.swap_source(TailnetSource.from_snapshot(snap))


def newcomer(serial: int, hostname: str, user: str) -> Registration:
    """A node registering with keys made from `serial` (one no other node has)."""
    key = serial.to_bytes(4, "big") + bytes(28)
    return Registration(
        machine_key=MachinePublic(key),
        node_key=NodePublic(key),
        hostname=hostname,
        user=user,
        now=NOW,
        disco_key=DiscoPublic(key),
        capver=133,
    )


def fill(store: Store, nodes: list[Node]) -> None:
    """The synthetic tailnet's nodes, registered in the store."""
    for n in nodes:
        store.create_node(
            Registration(
                machine_key=n.machine_key,
                node_key=n.node_key,
                hostname=n.hostname,
                user=n.user,
                tags=n.tags,
                now=NOW,
                disco_key=n.disco_key,
                hostinfo=n.hostinfo,
                endpoints=n.endpoints,
                capver=133,
            )
        )


class Pump:
    """Does what each stream's loop does when woken, for every session."""

    def __init__(self, registry: NodeRegistry, tailnet: Tailnet) -> None:
        self.registry = registry
        self.tailnet = tailnet
        self.sessions: dict[int, tuple[SessionHandle, MapSession, MapFrameEncoder]] = {}
        self.bytes_sent = 0
        self.messages = 0
        self.done: list[float] = []  # perf_counter when each message was ready

    def open(self, node_id: int) -> None:
        self.sessions[node_id] = (
            self.tailnet.open_session(node_id),
            MapSession(node_id),
            MapFrameEncoder(),
        )
        self.registry.connected(node_id)

    def run(self) -> None:
        ctx = self.tailnet.context
        for handle, session, encoder in self.sessions.values():
            wake = handle.take_wake()
            if not (wake.full or wake.top or wake.peers):
                continue  # asleep: its stream's loop does nothing
            msg = None
            if session.serves(ctx):
                msg = session.step(ctx, wake, NOW)
            if msg is not None:
                self.bytes_sent += len(encoder.encode(msg))
                self.messages += 1
                self.done.append(time.perf_counter())


RESULTS: list[dict[str, Any]] = []


PROFILE: list[Any] = []  # [path, cProfile.Profile]: --profile, policy commits only


GC_POLICY: list[GcPolicy] = []  # --gc-policy: the server's (server/gcpolicy.py)


class CollectionClock:
    """A gc callback: full collections counted, CPU time in every collection summed."""

    def __init__(self) -> None:
        self.full = 0
        self.seconds = 0.0
        self._start = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._start = time.process_time()
            return
        self.seconds += time.process_time() - self._start
        self.full += info["generation"] == 2


def timed(label: str, fn: Callable[[], None], pump: Pump) -> None:
    pump.bytes_sent = pump.messages = 0
    pump.done = []
    profiler = PROFILE[1] if PROFILE and label == "policy commit" else None
    policy = GC_POLICY[0] if GC_POLICY else None
    collections = CollectionClock()
    gc.callbacks.append(collections)
    t0, c0 = time.perf_counter(), time.process_time()
    if profiler is not None:
        profiler.enable()
    if policy is not None:
        policy.hold()  # as the server's fan-out is held until it drained
    fn()
    pump.run()
    if policy is not None:
        policy.release()
    if profiler is not None:
        profiler.disable()
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    gc.callbacks.remove(collections)
    # When each session had its message, from the event: p50/p99 over sessions.
    lat = sorted(t - t0 for t in pump.done) or [dt]
    p50, p99 = lat[len(lat) // 2], lat[min(len(lat) - 1, int(len(lat) * 0.99))]
    # CPU time too: on a shared machine it moves less than wall time does.
    print(
        f"{label:<22} {dt * 1000:>9.1f} ms  {pump.messages:>6} messages  "
        f"{pump.bytes_sent / 1e6:>8.2f} MB  {cpu * 1000:>9.1f} ms CPU  "
        f"p50/p99 {p50 * 1000:.0f}/{p99 * 1000:.0f} ms  "
        f"gc {collections.full} full {collections.seconds * 1000:.0f} ms CPU"
    )
    RESULTS.append(
        {
            "event": label,
            "wall_s": dt,
            "cpu_s": cpu,
            "messages": pump.messages,
            "bytes": pump.bytes_sent,
            "p50_s": p50,
            "p99_s": p99,
            "gc_full": collections.full,
            "gc_s": collections.seconds,
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--rules", type=int, default=500)
    parser.add_argument("--allow-all", action="store_true")
    parser.add_argument("--repeat", type=int, default=1, help="joins and commits to time")
    parser.add_argument(
        "--no-coalesce", action="store_true", help="recompile at every join (as before)"
    )
    parser.add_argument(
        "--per-user", type=int, default=0, help="users of this many nodes under autogroup:self"
    )
    parser.add_argument("--json", type=Path, help="write the rows here")
    parser.add_argument("--profile", type=Path, help="cProfile the policy commits, stats here")
    parser.add_argument(
        "--gc-freeze",
        action="store_true",
        help="gc.collect(); gc.freeze() once the tailnet is built, as `tailnetd serve` does "
        "after start-up (server/cli.py): what start-up made is never scanned again",
    )
    parser.add_argument(
        "--gc-policy",
        action="store_true",
        help="the server's GcPolicy: full collections held through each event and its "
        "fan-out, what it leaves frozen after (server/gcpolicy.py)",
    )
    args = parser.parse_args()
    if args.gc_policy:
        GC_POLICY[:] = [GcPolicy()]
    if args.profile:
        import cProfile

        PROFILE[:] = [args.profile, cProfile.Profile()]
    if args.per_user:
        doc, registry, users = per_user(args.nodes, args.per_user)
        args.rules = 1
    else:
        doc, registry, users = synthetic(args.nodes, args.rules)
    policy = ALLOW_ALL if args.allow_all else parse_policy(doc)
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(Path(tmp) / "bench.sqlite")
        t0 = time.perf_counter()
        fill(store, registry)
        print(
            f"{args.nodes} nodes, {args.rules} rules{' (allow-all)' if args.allow_all else ''}; "
            f"store filled in {time.perf_counter() - t0:.1f}s"
        )
        t0 = time.perf_counter()
        nodes, tailnet = running_tailnet(
            store,
            source(policy, users, "a"),
            derp_regions=[DerpRegion(999, "tailnetd", "tailnetd", "127.0.0.1", 8080, 3478)],
            log=logging.getLogger("bench"),
            clock=lambda: NOW,
            defer=(lambda fn: False) if args.no_coalesce else defer_on_loop,
            gc_policy=GC_POLICY[0] if GC_POLICY else None,
        )
        print(f"{'first compile':<22} {(time.perf_counter() - t0) * 1000:>9.1f} ms")
        if args.gc_freeze:
            gc.collect()
            gc.freeze()
        pump = Pump(nodes, tailnet)
        timed("connect storm", lambda: [pump.open(n.id) for n in store.list_nodes()], pump)

        first = store.list_nodes()[0]

        def endpoint_change(node: Node = first) -> None:
            nodes.update_from_map(node, now=NOW, endpoints=("127.0.0.1:1",))

        timed("endpoint change", endpoint_change, pump)

        def join(k: int) -> None:
            nodes.register(
                newcomer(args.nodes + 7 + k, f"newcomer{k}" if k else "newcomer", users[1][1])
            )

        # Repeats (more joins; commits alternating between two policies) give
        # several samples of the same event, for noisy machines.
        if args.per_user:
            docs = [_self_ports(doc, "22,443"), doc]
        else:
            docs = [dict(doc, acls=list(doc["acls"])[:-1]), doc]
        for k in range(args.repeat):
            timed("node join", lambda k=k: join(k), pump)
            if not args.allow_all:
                d = docs[k % 2]
                timed(
                    "policy commit",
                    lambda d=d, k=k: tailnet.swap_source(source(parse_policy(d), users, f"c{k}")),
                    pump,
                )

        def burst(k: int) -> None:
            async def registrations() -> None:  # as the server's tasks make them
                for n in range(BURST):
                    join(1000 + k * BURST + n)
                await asyncio.sleep(COALESCE_SECONDS * 2)

            asyncio.run(registrations())

        for k in range(args.repeat):
            timed(f"{BURST} joins at once", lambda k=k: burst(k), pump)
        if not args.allow_all:
            repo = GitTailnet(Path(tmp) / "repo", doc, users)
            # Served once untimed: from here on DNS and users come from git too.
            serve_commit(tailnet, repo, repo.git.head.commit.hexsha)
            pump.run()
            for k in range(args.repeat):
                rev = repo.commit(docs[k % 2], f"commit {k}")
                timed("commit from git", lambda rev=rev: serve_commit(tailnet, repo, rev), pump)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"peak RSS {rss:.0f} MB")
        if GC_POLICY:
            print(f"gc policy: {GC_POLICY[0].stats}")
            # A sweep's pause (every SWEEP_EVERY commits: unfreeze, collect, freeze)
            # over everything this run keeps: the stall the loop takes then.
            t0, c0 = time.perf_counter(), time.process_time()
            gc.unfreeze()
            found = gc.collect()
            gc.freeze()
            print(
                f"sweep: {(time.perf_counter() - t0) * 1000:.0f} ms "
                f"({(time.process_time() - c0) * 1000:.0f} ms CPU), {found} unreachable, "
                f"{gc.get_freeze_count()} objects frozen"
            )
        if PROFILE:
            import pstats

            with PROFILE[0].open("w") as out:
                stats = pstats.Stats(PROFILE[1], stream=out)
                stats.sort_stats("cumulative").print_stats(40)
                stats.sort_stats("tottime").print_stats(25)
        if args.json:
            shape = f"{args.per_user} per user, autogroup:self" if args.per_user else "synthetic"
            args.json.write_text(
                json.dumps(
                    {"nodes": args.nodes, "shape": shape, "rss_mb": rss, "rows": RESULTS},
                    indent=1,
                )
            )


if __name__ == "__main__":
    main()
