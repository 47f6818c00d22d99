"""`python -m bench.loadgen.meshprof N [--profile OUT]`: N simulated clients
register into a full mesh from this one process (no shards, so a profile of
this process is the load generator's whole receive path), 32 at a time as
bench_socket's mesh runs do, until each holds N - 1 peers.

Prints the load generator's CPU (this process's CPU clock) and the server's
(/proc) per registration, and the map messages the clients applied. With
`--profile`, cProfile timed by the CPU clock (bench/cpuprofile.py says why)
over the registrations, and its top functions.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import time
from pathlib import Path

from bench.loadgen.fleet import Fleet, tune_gc
from bench.loadgen.local import LocalServer, local_server
from bench.loadgen.warmup import warm_up

USERS = "users:\n  - {name: alice, email: alice@example.com, display_name: Alice}\n"
MESH = '{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}\n'
IN_FLIGHT = 64  # bench_socket.MESH_CONCURRENCY


async def _register(server: LocalServer, nodes: int, profiler: cProfile.Profile | None) -> str:
    fleet = Fleet(server.address, server.key("alice"), concurrency=IN_FLIGHT)
    await fleet.server_key()
    cpu, served, start = time.process_time(), server.cpu_seconds(), time.monotonic()
    if profiler:
        profiler.enable()
    await fleet.add(nodes)
    while not all(len(n.netmap.peers) >= nodes - 1 for n in fleet.nodes):
        await asyncio.sleep(0.05)
    if profiler:
        profiler.disable()
    cpu, served = time.process_time() - cpu, server.cpu_seconds() - served
    wall = time.monotonic() - start
    messages = sum(n.netmap.messages for n in fleet.nodes)
    await fleet.close()
    return (
        f"mesh {nodes}: loader {cpu / nodes * 1e3:.2f} ms CPU per registration, server"
        f" {served / nodes * 1e3:.2f} ms; {messages / nodes:.1f} messages per registration,"
        f" loader {cpu / messages * 1e6:.0f} us per message; {nodes / wall:.1f}/s;"
        f" load {os.getloadavg()[0]:.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("nodes", type=int)
    parser.add_argument("--profile", type=Path)
    args = parser.parse_args()
    tune_gc()  # as a shard does
    warm_up()
    profiler = cProfile.Profile(time.process_time) if args.profile else None
    with local_server({"users.yaml": USERS, "policy.hujson": MESH}) as server:
        print(asyncio.run(_register(server, args.nodes, profiler)))
    if profiler and args.profile:
        profiler.dump_stats(args.profile)
        pstats.Stats(str(args.profile)).sort_stats("cumulative").print_stats(40)


if __name__ == "__main__":
    main()
