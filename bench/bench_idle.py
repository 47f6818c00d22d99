"""Idle CPU with every node streaming: `tailnetd serve` on loopback, N sparse
clients registered through the load generator, then the server's CPU seconds
(utime + stime from /proc) sampled over a window in which nothing happens.

    python -m bench.bench_idle --nodes 5000 --shards 2 --window 60 [--groups] [--py-spy FILE]

`--groups`: bench_socket's groups topology (one user per 25 nodes under
`autogroup:self`, 24 peers each) instead of the sparse policy (no peers).

The window must be at least one keep-alive period (50-58 s) long: every
streaming session then sends about one keep-alive in it whatever its phase.
A shorter window that starts right after the registrations ends before the
first keep-alive is due and reads near zero (bench_socket's former 10 s
window did that when registrations were fast, and read 7-9% when slow).
`--py-spy FILE` records the server (py-spy from PyPI, a dev tool, not a
dependency) over the window and writes a flame graph or, with a `.txt` name,
its top functions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.bench_socket import SPARSE, USERS, register
from bench.loadgen.local import LocalServer, local_server
from bench.sparse_events import group_files, user_keys


async def _sample(server: LocalServer, window: float, step: float) -> list[float]:
    """CPU % of a core per `step` seconds over `window`."""
    out: list[float] = []
    last = server.cpu_seconds()
    for _ in range(round(window / step)):
        await asyncio.sleep(step)
        now = server.cpu_seconds()
        out.append(round((now - last) / step * 100, 2))
        last = now
    return out


def keepalives_sent(server: LocalServer) -> int:
    """tailnetd_map_messages_total{kind="keepalive"}, from /metrics on the admin socket."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(server.tmp / "data" / "tailnetd.sock"))
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    text = b"".join(chunks).decode()
    for line in text.splitlines():
        if line.startswith('tailnetd_map_messages_total{kind="keepalive"}'):
            return int(float(line.split()[-1]))
    raise RuntimeError("no keep-alive counter in /metrics")


def _py_spy(pid: int, window: float, out: Path) -> subprocess.Popen[bytes]:
    fmt = ["--format", "raw"] if out.suffix == ".txt" else []
    target = out.with_suffix(".folded") if fmt else out
    spy = Path(sys.executable).parent / "py-spy"
    args = [str(spy), "record", "--pid", str(pid), "--duration", str(int(window))]
    args += ["--rate", "200", "--idle", "--nonblocking", "--output", str(target), *fmt]
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _top(folded: Path, out: Path, limit: int = 40) -> None:
    """Self and total sample counts per function from py-spy's folded stacks."""
    own: dict[str, int] = {}
    total: dict[str, int] = {}
    samples = 0
    for line in folded.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        count = int(count_text)
        samples += count
        frames = stack.split(";")
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for frame in set(frames):
            total[frame] = total.get(frame, 0) + count
    lines = [f"{samples} samples"]
    for title, table in (("self", own), ("total", total)):
        lines.append(f"\n-- by {title} --")
        for frame, count in sorted(table.items(), key=lambda kv: -kv[1])[:limit]:
            lines.append(f"{count / samples * 100:6.1f}%  {frame}")
    out.write_text("\n".join(lines) + "\n")


def run(
    nodes: int,
    shards: int,
    window: float,
    settle: float,
    spy: Path | None,
    *,
    groups: bool = False,
) -> dict[str, Any]:
    files, users = (
        group_files(nodes) if groups else ({"users.yaml": USERS, "policy.hujson": SPARSE}, [])
    )
    with local_server(files) as server:
        keys = user_keys(server, users) if users else []

        async def scenario() -> dict[str, Any]:
            fleet, result = await register(
                server,
                nodes,
                mesh=False,
                shards=shards,
                idle_window=None,
                keys=[keys[n % len(keys)] for n in range(nodes)] if keys else None,
            )
            try:
                await asyncio.sleep(settle)
                load = os.getloadavg()[0]
                sent = keepalives_sent(server)
                before = server.cpu_seconds()
                spying = _py_spy(server.pid, window, spy) if spy else None
                start = time.monotonic()
                samples = await _sample(server, window, 10.0)
                took = time.monotonic() - start
                if spying is not None:
                    spying.wait(timeout=60)
                cpu = server.cpu_seconds() - before
                keepalives = keepalives_sent(server) - sent
                return {
                    "nodes": nodes,
                    "topology": "groups" if groups else "sparse",
                    "registrations_per_s": result["registrations_per_s"],
                    "window_s": window,
                    "settle_s": settle,
                    "idle_cpu_percent": round(cpu / took * 100, 2),
                    "idle_cpu_s": round(cpu, 3),
                    # every stream sends ~one per 50-58 s: about nodes * window / 54
                    "keepalives_sent": keepalives,
                    "cpu_us_per_keepalive": round(cpu / max(keepalives, 1) * 1e6),
                    "per_10s_percent": samples,
                    "load_average": [round(load, 2), round(os.getloadavg()[0], 2)],
                    "server_rss_mb": round(server.rss_bytes() / 2**20, 1),
                }
            finally:
                await fleet.close()

        out = asyncio.run(scenario())
    if spy is not None and spy.suffix == ".txt":
        _top(spy.with_suffix(".folded"), spy)
    print(json.dumps(out), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nodes", type=int, default=5000)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--window", type=float, default=60.0)
    parser.add_argument("--settle", type=float, default=5.0, help="seconds before the window")
    parser.add_argument("--py-spy", type=Path, dest="spy")
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--groups", action="store_true", help="one user per 25 nodes (24 peers), not sparse"
    )
    args = parser.parse_args()
    result = run(args.nodes, args.shards, args.window, args.settle, args.spy, groups=args.groups)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
