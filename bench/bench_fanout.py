"""What a change costs the server per streaming peer: a full mesh of N real
clients (Noise, HTTP/2, one streaming map each, bench/loadgen), then a number
of endpoint changes and of policy commits, each until every client has it.

    python -m bench.bench_fanout --mesh 1000 --repeats 20 [--profile DIR]

Prints, per run: server CPU (utime+stime from /proc, so other load on the
machine does not count) per affected peer for an endpoint change and for a
commit, and what the clients observed (p50/p99 ms). `--profile DIR`: the
server runs under bench/windowprof.py, profiled over the endpoint changes
only (DIR/fanout-N.txt), not over the registrations nor the commits.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.bench_socket import MESH, USERS, commit_policy, register
from bench.loadgen.fleet import At, Watch
from bench.loadgen.local import LocalServer, local_server
from bench.loadgen.shards import ShardedFleet
from bench.loadgen.stats import summary

TIMEOUT = 300.0


async def _changes(
    server: LocalServer, fleet: ShardedFleet, repeats: int, toggle: Callable[[], None]
) -> dict[str, Any]:
    """Endpoint changes, then commits; `toggle` before and after the endpoint
    changes (the profile's window)."""
    mover = await fleet.node(0, 0)
    node_id = mover.node_id or 0
    moved: list[float] = []
    toggle()
    served = server.cpu_seconds()
    for n in range(repeats):
        endpoints = [f"127.0.{n // 250}.{n % 250 + 1}:41641", "127.0.0.2:41641"]
        moved += await fleet.observe(
            Watch("peer_endpoints", (node_id, endpoints)),
            lambda e=endpoints: fleet.set_endpoints(mover, e),
            timeout=TIMEOUT,
            exclude=mover,
        )
    endpoint_cpu = server.cpu_seconds() - served
    toggle()
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
        "endpoint_server_cpu_us_per_peer": round(
            endpoint_cpu / repeats / (fleet.count - 1) * 1e6, 1
        ),
        "endpoint": summary(moved),
        "commit_server_cpu_us_per_peer": round(commit_cpu / repeats / fleet.count * 1e6, 1),
        "commit": summary(committed),
    }


def run(nodes: int, repeats: int, profile: Path | None) -> dict[str, Any]:
    out = profile / f"fanout-{nodes}.prof" if profile else None
    launcher = ["-m", "bench.windowprof", str(out)] if out else None
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

                result.update(await _changes(server, fleet, repeats, toggle))
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
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    results = [run(n, args.repeats, args.profile) for n in args.mesh]
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    for r in results:
        print(
            f"mesh {r['nodes']}: endpoint {r['endpoint_server_cpu_us_per_peer']} us/peer "
            f"(p50/p99 {r['endpoint']['p50_ms']}/{r['endpoint']['p99_ms']} ms), commit "
            f"{r['commit_server_cpu_us_per_peer']} us/peer "
            f"(p50/p99 {r['commit']['p50_ms']}/{r['commit']['p99_ms']} ms), "
            f"load {r['load_average']}-{r['load_average_after']}"
        )


if __name__ == "__main__":
    main()
