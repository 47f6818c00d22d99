"""`python -m bench.loadgen --server-url URL --auth-key KEY --nodes N`

Registers N simulated nodes with a (reusable) pre-auth key, keeps a streaming
map open for each, then measures what the clients observe: one more node
joining (until every streaming peer has it) and one node's endpoints changing
(until every client that sees it has the new endpoints). Prints a table and,
with --json, writes the numbers. Works against any Tailscale control server
that accepts pre-auth keys; it only dials loopback addresses.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import socket
import sys
from pathlib import Path
from typing import Any

from bench.loadgen.client import ServerAddress
from bench.loadgen.fleet import Fleet, has_peer_key, peer_endpoints
from bench.loadgen.stats import summary, table


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__)
    parser.add_argument("--server-url", required=True, help="e.g. http://127.0.0.1:8080")
    parser.add_argument("--auth-key", required=True, help="a reusable pre-auth key")
    parser.add_argument("--nodes", type=int, default=100, help="simulated nodes (default 100)")
    parser.add_argument("--concurrency", type=int, default=8, help="registrations in flight")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per measurement")
    parser.add_argument("--hold", type=float, default=0.0, help="seconds to keep streaming")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    if not 1 <= args.nodes <= 10_000:
        parser.error("--nodes must be between 1 and 10000")
    try:
        address = ServerAddress.parse(args.server_url)
    except ValueError as exc:
        parser.error(str(exc))
    if not _is_loopback(address.host):
        parser.error(f"{address.host} is not a loopback address; this tool only dials loopback")
    args.address = address
    return args


def _is_loopback(host: str) -> bool:
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    fleet = Fleet(args.address, args.auth_key, concurrency=args.concurrency)
    try:
        start = fleet.clock()
        up = await fleet.add(args.nodes)
        elapsed = fleet.clock() - start
        results: dict[str, Any] = {
            "nodes": args.nodes,
            "registrations_per_s": round(args.nodes / elapsed, 1),
            "register_to_first_map": summary(up),
        }
        # Only clients that hold peers can see a newcomer (a policy may give none).
        observers = [n for n in fleet.nodes if n.netmap.peers]
        newcomer = fleet.new_node()
        if observers:
            results["join"] = summary(
                await fleet.observe(
                    observers,
                    lambda _: has_peer_key(newcomer.node_key),
                    lambda: fleet.bring_up(newcomer),
                    timeout=args.timeout,
                )
            )
        else:
            await fleet.bring_up(newcomer)
        mover = fleet.nodes[0]
        assert mover.node_id is not None
        endpoints = ["127.0.0.1:41641", "127.0.0.2:41641"]
        watchers = [n for n in fleet.nodes if mover.node_id in n.netmap.peers]
        if watchers:
            results["endpoint_change"] = summary(
                await fleet.observe(
                    watchers,
                    lambda _: peer_endpoints(mover.node_id or 0, endpoints),
                    lambda: fleet.set_endpoints(mover, endpoints),
                    timeout=args.timeout,
                )
            )
        if args.hold:
            await asyncio.sleep(args.hold)
        results["still_streaming"] = sum(not n.ended.is_set() for n in fleet.nodes)
        return results
    finally:
        await fleet.close()


def render(results: dict[str, Any]) -> str:
    rows: list[list[object]] = [
        ["registrations/s", results["registrations_per_s"], "", ""],
    ]
    for key in ("register_to_first_map", "join", "endpoint_change"):
        if key in results:
            s = results[key]
            rows.append([key.replace("_", " ") + " (ms)", s["p50_ms"], s["p99_ms"], s["max_ms"]])
    return table(rows, [f"{results['nodes']} nodes", "p50", "p99", "max"])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = asyncio.run(run(args))
    print(render(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
