"""What a change costs the server per streaming peer: a full mesh of N real
clients (Noise, HTTP/2, one streaming map each, bench/loadgen), then a number
of endpoint changes and of policy commits, each until every client has it.

    python -m bench.bench_fanout --mesh 1000 --repeats 20 [--profile DIR]

Prints, per run: server CPU (utime+stime from /proc, so other load on the
machine does not count) per affected peer for an endpoint change and for a
commit, and what the clients observed (p50/p99 ms). `--profile DIR`: the
server runs under bench/windowprof.py, profiled over the endpoint changes
only (DIR/fanout-N.txt), not over the registrations nor the commits.
`--phases DIR`: the same window, with the changes' parts timed on the CPU
clock instead (bench/phasecpu.py, DIR/phases-N.json).

Two readings of "server CPU per affected peer" for an endpoint change:
- average (`endpoint_server_cpu_us_per_peer`, per run): a change's whole
  server CPU divided by its peers, the change's fixed cost included;
- marginal (`endpoint_marginal`, over all runs, with two or more mesh sizes):
  the slope of server CPU per change against peers told, a least-squares line
  through each size's mean (`us_per_peer`, `fixed_us`) and through each size's
  median (`median_us_per_peer`, `median_fixed_us`). The intercept is what a
  change costs before any peer is told: the mover's lite request, the store
  write, the publish, its own answer. E.g. --mesh 2 25 100 400 --repeats 100.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path
from typing import Any

from bench.bench_socket import MESH, USERS, commit_policy, register
from bench.loadgen.fleet import At, Watch
from bench.loadgen.local import LocalServer, local_server
from bench.loadgen.shards import ShardedFleet
from bench.loadgen.stats import summary

TIMEOUT = 300.0


async def _changes(
    server: LocalServer,
    fleet: ShardedFleet,
    repeats: int,
    toggle: Callable[[], None],
    with_commits: bool,
    pause: float = 0.0,
) -> dict[str, Any]:
    """Endpoint changes, then commits; `toggle` before and after the endpoint
    changes (the profile's window); `pause` seconds idle before each change."""
    mover = await fleet.node(0, 0)
    node_id = mover.node_id or 0
    moved: list[float] = []
    toggle()
    served = server.cpu_seconds()
    marks = [served]
    for n in range(repeats):
        endpoints = [f"127.0.{n // 250}.{n % 250 + 1}:41641", "127.0.0.2:41641"]
        if pause:
            await asyncio.sleep(pause)
        moved += await fleet.observe(
            Watch("peer_endpoints", (node_id, endpoints)),
            lambda e=endpoints: fleet.set_endpoints(mover, e),
            timeout=TIMEOUT,
            exclude=mover,
        )
        marks.append(server.cpu_seconds())
    endpoint_cpu = marks[-1] - served
    toggle()
    if not with_commits:
        return _endpoint_result(endpoint_cpu, marks, repeats, fleet.count, moved)
    committed: list[float] = []
    served = server.cpu_seconds()
    for n in range(repeats):
        port = 47200 + n

        async def act(port: int = port) -> At:
            files = {"policy.hujson": commit_policy(port)}
            await asyncio.to_thread(server.commit, files, f"rule {port}")
            return At(fleet.clock())

        committed += await fleet.observe(
            Watch("top_mentions", ("PacketFilter", str(port))), act, timeout=TIMEOUT
        )
    commit_cpu = server.cpu_seconds() - served
    return {
        **_endpoint_result(endpoint_cpu, marks, repeats, fleet.count, moved),
        "commit_server_cpu_us_per_peer": round(commit_cpu / repeats / fleet.count * 1e6, 1),
        "commit": summary(committed),
    }


def _endpoint_result(
    cpu: float, marks: list[float], repeats: int, nodes: int, moved: list[float]
) -> dict[str, Any]:
    return {
        "endpoint_server_cpu_us_per_peer": round(cpu / repeats / (nodes - 1) * 1e6, 1),
        # Each change's server CPU, for the marginal fit and to tell outliers
        # (a keep-alive batch, a heap trim) from the rest.
        "endpoint_server_cpu_us_per_change": [round((b - a) * 1e6) for a, b in pairwise(marks)],
        "endpoint": summary(moved),
    }


def marginal(results: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The slope and intercept of server CPU per change against peers told,
    over the runs' mesh sizes; None with fewer than two sizes."""
    sizes = sorted({r["nodes"] for r in results})
    if len(sizes) < 2:
        return None
    peers: list[float] = []
    means: list[float] = []
    medians: list[float] = []
    for r in results:
        per_change = r["endpoint_server_cpu_us_per_change"]
        peers.append(r["nodes"] - 1)
        means.append(statistics.fmean(per_change))
        medians.append(statistics.median(per_change))
    by_mean = statistics.linear_regression(peers, means)
    by_median = statistics.linear_regression(peers, medians)
    return {
        "peers": peers,
        "us_per_peer": round(by_mean.slope, 1),
        "fixed_us": round(by_mean.intercept),
        "median_us_per_peer": round(by_median.slope, 1),
        "median_fixed_us": round(by_median.intercept),
    }


def run(
    nodes: int,
    repeats: int,
    profile: Path | None,
    with_commits: bool,
    phases: Path | None = None,
    pause: float = 0.0,
) -> dict[str, Any]:
    out = profile / f"fanout-{nodes}.prof" if profile else None
    launcher = ["-m", "bench.windowprof", str(out)] if out else None
    if phases:
        out = phases / f"phases-{nodes}.json"
        launcher = ["-m", "bench.phasecpu", str(out)]
    files = {"users.yaml": USERS, "policy.hujson": MESH}
    with local_server(files, launcher=launcher) as server:

        async def scenario() -> dict[str, Any]:
            fleet, result = await register(server, nodes, mesh=True, idle_window=None)
            assert isinstance(fleet, ShardedFleet)
            try:
                await asyncio.sleep(2)  # the last joins' waves are over

                def toggle() -> None:
                    if out:
                        os.kill(server.pid, signal.SIGUSR1)

                result.update(await _changes(server, fleet, repeats, toggle, with_commits, pause))
                result["pause_ms"] = pause * 1000
                if out:
                    await asyncio.sleep(3)  # the stats written
                result["load_average_after"] = round(os.getloadavg()[0], 1)
                return result
            finally:
                await fleet.close()

        result = asyncio.run(scenario())
    print(json.dumps(result), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mesh", type=int, nargs="*", default=[100, 1000])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--profile", type=Path, help="profile the changes, stats here")
    parser.add_argument(
        "--phases",
        type=Path,
        help="time the endpoint changes' parts on the CPU clock (bench/phasecpu.py), JSON here",
    )
    parser.add_argument(
        "--json",
        type=Path,
        help="write the runs here: a list, one object a mesh size, then (with two or "
        "more sizes) {'endpoint_marginal': ...}",
    )
    parser.add_argument(
        "--no-commits", action="store_true", help="endpoint changes only (no commit runs)"
    )
    parser.add_argument(
        "--pause",
        type=float,
        default=0.0,
        help="ms idle before each endpoint change (counted in its CPU: the server's idle"
        " CPU, ~0 in a small mesh). Each change is sent once the last is seen, so without"
        " a pause a faster change also shortens the server's sleep before the next, which"
        " finds it warmer; a pause makes every change meet a process that slept as long",
    )
    args = parser.parse_args()
    for directory in (args.profile, args.phases):
        if directory:
            directory.mkdir(parents=True, exist_ok=True)
    results = [
        run(n, args.repeats, args.profile, not args.no_commits, args.phases, args.pause / 1000)
        for n in args.mesh
    ]
    fit = marginal(results)
    if args.json:
        kept: list[dict[str, Any]] = [*results, {"endpoint_marginal": fit}] if fit else results
        args.json.write_text(json.dumps(kept, indent=2) + "\n")
    for r in results:
        per_change = r["endpoint_server_cpu_us_per_change"]
        line = (
            f"mesh {r['nodes']}: endpoint {r['endpoint_server_cpu_us_per_peer']} us/peer "
            f"(median change {statistics.median(per_change):.0f} us, "
            f"p50/p99 {r['endpoint']['p50_ms']}/{r['endpoint']['p99_ms']} ms)"
        )
        if "commit" in r:
            line += (
                f", commit {r['commit_server_cpu_us_per_peer']} us/peer "
                f"(p50/p99 {r['commit']['p50_ms']}/{r['commit']['p99_ms']} ms)"
            )
        print(f"{line}, load {r['load_average']}-{r['load_average_after']}")
    if fit:
        print(
            f"endpoint marginal: {fit['us_per_peer']} us/peer, fixed {fit['fixed_us']} us "
            f"a change (by medians: {fit['median_us_per_peer']} us/peer, fixed "
            f"{fit['median_fixed_us']} us), over peers {fit['peers']}"
        )


if __name__ == "__main__":
    main()
