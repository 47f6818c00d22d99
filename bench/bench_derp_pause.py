"""How long DERP relay stalls while a large commit compiles.

Run: python -m bench.bench_derp_pause [--nodes 5000] [--rules 2000] [--commits 3]
     [--gc-freeze] [--switch-interval 1]   (both as `tailnetd serve` runs)

One process serves the embedded DERP relay (loopback, an ephemeral port) and
a Tailnet over a synthetic tailnet (bench_compile's generator). A second
process (this module with --client) plays two DERP clients: A sends B a
1,400-byte packet every millisecond; B notes when each arrives. Meanwhile the
server swaps in policy commits, first compiling on the event loop (the old
way), then in a worker thread (`Tailnet.swap_source_off_loop`). The client
reports the longest gap between two packets reaching B in each phase: the
target is no pause over 50 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.bench_compile import synthetic
from bench.bench_tailnet import NOW, fill, source
from gitctl.policy import parse_policy
from server.edge.derp_server import DerpServer
from server.protocol import derp
from server.protocol.derp import ClientInfo, FrameDecoder, FrameType
from server.protocol.keys import NodePrivate
from server.store import open_store
from server.tailnet import running_tailnet
from server.wire import DerpRegion

PACKET = bytes(1400)
UPGRADE = b"GET /derp HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: DERP\r\n\r\n"


# The clients (a separate process, as real DERP clients are)


class Client:
    def __init__(self) -> None:
        self.key = NodePrivate.generate()
        self.decoder = FrameDecoder()

    async def connect(self, port: int) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", port)
        self.writer.write(UPGRADE)
        await self.reader.readuntil(b"\r\n\r\n")
        frames: list[derp.Frame] = []
        while not frames:
            frames = self.decoder.receive_data(await self.reader.read(65536))
        server_key = derp.parse_server_key(frames[0].payload)
        info = ClientInfo(version=2, can_ack_pings=True)
        self.writer.write(derp.client_info_frame(self.key, server_key, info, os.urandom(24)))
        self.writer.write(derp.note_preferred_frame(True))


async def receive(b: Client, arrivals: list[float], stop: asyncio.Event) -> None:
    while not stop.is_set():
        data = await b.reader.read(1 << 20)
        if not data:
            return
        now = time.perf_counter()
        for frame in b.decoder.receive_data(data):
            if frame.type == FrameType.RECV_PACKET:
                arrivals.append(now)


async def clients(port: int) -> None:
    a, b = Client(), Client()
    await a.connect(port)
    await b.connect(port)
    stop = asyncio.Event()
    arrivals: list[float] = []
    receiver = asyncio.create_task(receive(b, arrivals, stop))
    frame = derp.send_packet_frame(b.key.public(), PACKET)
    loop = asyncio.get_running_loop()
    # The server says which phase runs (one line each), and "end".
    phases: list[tuple[str, float]] = []
    commands = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(commands), sys.stdin)
    print("ready", flush=True)

    async def send() -> None:
        while not stop.is_set():
            a.writer.write(frame)
            await asyncio.sleep(0.001)

    sender = asyncio.create_task(send())
    while (line := (await commands.readline()).decode().strip()) not in ("end", ""):
        phases.append((line, time.perf_counter()))
    stop.set()
    sender.cancel()
    receiver.cancel()
    phases.append(("end", time.perf_counter()))
    out = {}
    for (name, start), (_, end) in zip(phases, phases[1:], strict=False):
        times = [t for t in arrivals if start <= t < end]
        gaps = [y - x for x, y in zip(times, times[1:], strict=False)]
        out[name] = {
            "packets": len(times),
            "longest_gap_ms": round(max(gaps, default=0.0) * 1000, 1),
            "gaps_over_50ms": sum(g > 0.05 for g in gaps),
        }
    print(json.dumps(out), flush=True)


# The server


class GcPauses:
    """The longest garbage collection while a phase ran (it stops every thread)."""

    def __init__(self) -> None:
        self.longest = 0.0
        self._start = 0.0
        gc.callbacks.append(self._note)

    def _note(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.longest = max(self.longest, time.perf_counter() - self._start)

    def take(self) -> float:
        longest, self.longest = self.longest, 0.0
        return longest


async def server(args: argparse.Namespace) -> dict[str, Any]:
    doc, nodes, users = synthetic(args.nodes, args.rules)
    docs = [dict(doc, acls=list(doc["acls"])[:-1]), doc]
    policies = [parse_policy(d) for d in docs]
    relay = DerpServer(NodePrivate.generate(), is_allowed=lambda key: True)

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await relay.handle(reader, writer, fast_start=False)

    listener = await asyncio.start_server(on_connection, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(Path(tmp) / "bench.sqlite")
        fill(store, nodes)
        _, tailnet = running_tailnet(
            store,
            source(policies[1], users, "a"),
            derp_regions=[DerpRegion(999, "tailnetd", "tailnetd", "127.0.0.1", 8080, 3478)],
            log=logging.getLogger("bench"),
            clock=lambda: NOW,
        )
        if args.gc_freeze:  # as `tailnetd serve` does
            gc.collect()
            gc.freeze()  # what start-up leaves is never scanned again
        if args.switch_interval:  # as `tailnetd serve` does (Python's default: 5 ms)
            sys.setswitchinterval(args.switch_interval / 1000)
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.bench_derp_pause",
            "--client",
            str(port),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert child.stdin is not None and child.stdout is not None
        assert (await child.stdout.readline()).strip() == b"ready"

        def phase(name: str) -> None:
            assert child.stdin is not None
            child.stdin.write(name.encode() + b"\n")

        timings: dict[str, list[float]] = {"on the loop": [], "off the loop": []}
        gc_pauses = GcPauses()
        longest_gc: dict[str, float] = {}
        phase("idle")
        await asyncio.sleep(1)
        for mode, times in timings.items():
            gc_pauses.take()
            phase(mode)
            for k in range(args.commits):
                commit = source(policies[k % 2], users, f"{mode}{k}")
                t0 = time.perf_counter()
                if mode == "on the loop":
                    tailnet.swap_source(commit)
                else:
                    await tailnet.swap_source_off_loop(commit)
                times.append(time.perf_counter() - t0)
                await asyncio.sleep(0.3)
            longest_gc[mode] = gc_pauses.take()
        phase("end")
        report = json.loads(await child.stdout.readline())
        await child.wait()
        store.close()
    listener.close()
    await relay.close()
    for mode, times in timings.items():
        report[mode]["commit_ms"] = [round(t * 1000) for t in times]
        report[mode]["longest_gc_ms"] = round(longest_gc[mode] * 1000, 1)
    return dict(report)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=5000)
    parser.add_argument("--rules", type=int, default=2000)
    parser.add_argument("--commits", type=int, default=3)
    parser.add_argument(
        "--gc-freeze", action="store_true", help="gc.freeze() once the tailnet is built"
    )
    parser.add_argument(
        "--switch-interval", type=float, help="sys.setswitchinterval, in ms (tailnetd serve: 1)"
    )
    parser.add_argument("--client", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client is not None:
        asyncio.run(clients(args.client))
        return
    report = asyncio.run(server(args))
    print(f"{args.nodes} nodes, {args.rules} rules; 1,400-byte packets every ms through DERP")
    print(
        f"{'phase':<14} {'packets':>8} {'longest gap':>12} {'gaps > 50 ms':>13} "
        f"{'longest GC':>11}  commits"
    )
    for name, r in report.items():
        commits = ", ".join(f"{t} ms" for t in r.get("commit_ms", []))
        print(
            f"{name:<14} {r['packets']:>8} {r['longest_gap_ms']:>9.1f} ms "
            f"{r['gaps_over_50ms']:>13} {r.get('longest_gc_ms', 0.0):>8.1f} ms  {commits}"
        )


if __name__ == "__main__":
    main()
