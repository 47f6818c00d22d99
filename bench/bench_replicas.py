"""Two replicas on one PostgreSQL, measured through real sockets.

    python -m bench.bench_replicas --nodes 500 1000 \\
        --json docs/bench/replicas.json --plot docs/bench/replicas.png

A throwaway PostgreSQL (tests/pgserver.py, unix socket only), two
`tailnetd serve` replicas sharing it and one git source (their DERP servers
meshed, one control key), and the load generator's simulated clients split
across the two: even clients register and stream through replica A, odd ones
through replica B (two URLs, no load balancer in between: which replica a
client is on is then known, not guessed). Every client is in a full mesh
(bench_socket's policy). Measured, from what the clients see in their own
netmaps:

* registrations/s with every registered node streaming, both replicas at once;
* a policy commit -> every client on both replicas (each replica pulls the
  same git source and compiles it itself);
* a node joins through replica A -> every client on replica B has it
  (registration, NOTIFY, the other replica's recompile, its deltas);
* one node's endpoints change on replica A -> every client on replica B.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
from collections.abc import Awaitable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.bench_socket import CONCURRENCY, MARKER_PORT, MESH, TIMEOUT, USERS, commit_policy
from bench.loadgen.client import ServerAddress
from bench.loadgen.fleet import At, Fleet, SimNode, has_peer_key, peer_endpoints, top_mentions
from bench.loadgen.stats import machine, summary, table
from tests.e2e.harness import ServerProcess, TailnetRepo
from tests.pgserver import PgServer

TARGETS_MS = {"commit": 300.0, "join": 150.0, "endpoint_change": 100.0}


@contextmanager
def two_replicas(tmp: Path) -> Iterator[tuple[TailnetRepo, list[ServerProcess]]]:
    """PostgreSQL and two started replicas of one repo; all stopped on exit."""
    pg = PgServer.start()
    try:
        repo = TailnetRepo(tmp / "repo", {"users.yaml": USERS, "policy.hujson": MESH})
        mesh_key = tmp / "mesh.key"
        mesh_key.write_text(os.urandom(32).hex() + "\n")
        servers = [
            ServerProcess(repo.path, tmp / f"data-{r}", tmp / f"tailnetd-{r}.log") for r in "ab"
        ]
        for me, other in zip(servers, reversed(servers), strict=True):
            me.extra = [
                "--database", pg.url(),
                "--replica-id", me.data.name.removeprefix("data-"),
                "--mesh-key-file", str(mesh_key),
                "--mesh-with", other.url,
                "--control-key-file", str(tmp / "control.key"),
            ]  # fmt: skip
        try:
            for server in servers:  # one after the other: the first migrates the schema
                server.start()
            yield repo, servers
        finally:
            for server in servers:
                server.stop()
    finally:
        pg.stop()


def _rss(server: ServerProcess) -> int:
    assert server.proc is not None
    for line in Path(f"/proc/{server.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


async def _scenario(repo: TailnetRepo, servers: list[ServerProcess], nodes: int) -> dict[str, Any]:
    key = servers[0].create_key("alice", "--reusable")  # in the shared database
    a, b = (
        Fleet(
            ServerAddress.loopback(s.port),
            key,
            hostname_prefix=f"sim{s.data.name[-1]}-",
            concurrency=CONCURRENCY // 2,
            first_map_timeout=TIMEOUT,  # a join into a busy 1,000-node mesh on a loaded machine
        )
        for s in servers
    )
    rss0 = [_rss(s) for s in servers]
    try:
        start = a.clock()
        up = await asyncio.gather(a.add((nodes + 1) // 2), b.add(nodes // 2))
        elapsed = a.clock() - start
        everyone = a.nodes + b.nodes

        def enough(_: SimNode) -> Any:
            return lambda netmap: len(netmap.peers) >= nodes - 1

        await a.observe(everyone, enough, lambda: asyncio.sleep(0), timeout=TIMEOUT)
        out: dict[str, Any] = {
            "nodes": nodes,
            "split": f"{len(a.nodes)} on A, {len(b.nodes)} on B",
            "registrations_per_s": round(nodes / elapsed, 1),
            "register_to_first_map": summary(up[0] + up[1]),
            "kb_per_streaming_node": round(
                sum(_rss(s) - r for s, r in zip(servers, rss0, strict=True)) / nodes / 1024, 1
            ),
        }

        def committed() -> Awaitable[At]:
            async def act() -> At:
                files = {"policy.hujson": commit_policy(MARKER_PORT)}
                await asyncio.to_thread(repo.commit, files, "one more rule")
                return At(a.clock())

            return act()

        out["commit"] = summary(
            await a.observe(
                everyone,
                lambda _: top_mentions("PacketFilter", str(MARKER_PORT)),
                committed,
                timeout=TIMEOUT,
            )
        )
        newcomer = a.new_node()
        out["join"] = summary(
            await a.observe(
                b.nodes,
                lambda _: has_peer_key(newcomer.node_key),
                lambda: a.bring_up(newcomer),
                timeout=TIMEOUT,
            )
        )
        mover = a.nodes[0]
        endpoints = ["127.0.0.1:41641", "127.0.0.2:41641"]
        node_id = mover.node_id or 0
        out["endpoint_change"] = summary(
            await a.observe(
                b.nodes,
                lambda _: peer_endpoints(node_id, endpoints),
                lambda: a.set_endpoints(mover, endpoints),
                timeout=TIMEOUT,
            )
        )
        return out
    finally:
        await a.close()
        await b.close()


def run_one(nodes: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="tnd-rb-") as tmp:
        with two_replicas(Path(tmp)) as (repo, servers):
            result = asyncio.run(_scenario(repo, servers, nodes))
    print(json.dumps(result), flush=True)
    return result


def render(results: list[dict[str, Any]]) -> str:
    rows: list[list[object]] = []
    for r in results:
        label = f"2 replicas, mesh {r['nodes']:,}"
        rows.append([label, "registrations/s (all streaming, both)", r["registrations_per_s"], ""])
        rows.append([label, "memory per streaming node (KB, both)", r["kb_per_streaming_node"], ""])
        for key, name in (
            ("commit", "policy commit -> every client (A and B)"),
            ("join", "a node joins on A -> every peer on B"),
            ("endpoint_change", "endpoints change on A -> every peer on B"),
        ):
            s = r[key]
            target = TARGETS_MS[key]
            verdict = "met" if s["p99_ms"] <= target else f"{s['p99_ms'] / target:.1f}x over"
            rows.append(
                [label, f"{name} p50 / p99 (ms)", f"{s['p50_ms']} / {s['p99_ms']}", verdict]
            )
    return table(rows, ["run", "measure", "value", "one-process target"])


def plot(results: list[dict[str, Any]], path: Path, where: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    xs = [r["nodes"] for r in results]
    left.plot(xs, [r["registrations_per_s"] for r in results], marker="o")
    left.set(xlabel="nodes, all streaming", ylabel="registrations/s", title="Registrations")
    for key, target in TARGETS_MS.items():
        line = right.plot(
            xs,
            [r[key]["p99_ms"] for r in results],
            marker="o",
            label=f"{key.replace('_', ' ')} p99 (one-process target {target:g} ms)",
        )
        right.axhline(target, color=line[0].get_color(), linestyle=":", linewidth=1)
    right.set(
        xlabel="nodes (full mesh, half on each replica)",
        ylabel="ms until every client has it",
        yscale="log",
        title="Change -> every client (join/endpoints: A -> B)",
    )
    right.legend(fontsize=8)
    fig.suptitle(f"tailnetd, two replicas on PostgreSQL ({where})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nodes", type=int, nargs="*", default=[500, 1000])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--plot", type=Path)
    parser.add_argument("--replot", type=Path, help="no runs: table and plot from this JSON")
    args = parser.parse_args()
    where, results = machine(), []
    if args.replot:
        data = json.loads(args.replot.read_text())
        where, results = data["machine"], data["runs"]
    for n in [] if args.replot else args.nodes:
        results.append(run_one(n))
        if args.json:  # after every run: a sweep cut short keeps what it measured
            args.json.write_text(json.dumps({"machine": where, "runs": results}, indent=2) + "\n")
    print(f"\nmachine: {where}\n")
    print(render(results))
    if args.plot:
        plot(results, args.plot, where)


if __name__ == "__main__":
    main()
