"""`python -m bench.bench_regcpu [--nodes N] [--rounds R] [--loader-profile OUT]`:
CPU per sparse registration, server and load generator, without the socket
bench's commit and idle window.

One `tailnetd serve` (sparse policy); each round registers N more nodes from
one in-process `Fleet` (8 in flight, as bench_socket) and prints the server's
CPU per registration (utime+stime from /proc) and this process's
(`time.process_time`), with the load average beside them: on a shared
machine those two are what can be compared, not the rate.
`--loader-profile` runs the load generator under cProfile by its CPU clock;
`--spy OUT` samples the server with py-spy (`pip install py-spy`; not a
project dependency) over the rounds, in its raw "collapsed stacks" format:
unlike cProfile it does not inflate Python-heavy code against C calls.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import subprocess
import time
from pathlib import Path

from bench.bench_socket import SPARSE, USERS
from bench.loadgen.fleet import Fleet, tune_gc
from bench.loadgen.local import local_server


def main_thread_cpu_seconds(pid: int) -> float:
    """CPU time of process `pid`'s main thread, which runs the server's event
    loop: the one thread a registration's rate is bound by, whatever other
    threads (the store's writer, executors) take beside it."""
    return int(Path(f"/proc/{pid}/task/{pid}/schedstat").read_text().split()[0]) / 1e9


async def _round(
    fleet: Fleet, nodes: int, pid: int, cpu: object
) -> tuple[float, float, float, float]:
    assert callable(cpu)
    served, loop = cpu(), main_thread_cpu_seconds(pid)
    loader, start = time.process_time(), time.monotonic()
    await fleet.add(nodes)
    elapsed = time.monotonic() - start
    loop_cpu = (main_thread_cpu_seconds(pid) - loop) / nodes
    return (
        (cpu() - served) / nodes,
        loop_cpu,
        (time.process_time() - loader) / nodes,
        nodes / elapsed,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nodes", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--loader-profile", type=Path)
    parser.add_argument("--spy", type=Path, help="py-spy the server over the rounds, to this file")
    parser.add_argument("--strace", type=Path, help="count the server's system calls, to this file")
    args = parser.parse_args()
    # As a shard does: with the default thresholds, full collections that find
    # nothing (a fleet's clients live to the end) were 0.07-0.27 ms of loader
    # CPU per registration here, which the socket bench's shards never pay.
    tune_gc()
    profiler = cProfile.Profile(time.process_time) if args.loader_profile else None
    with local_server({"users.yaml": USERS, "policy.hujson": SPARSE}) as server:
        server.wait_settled()  # its start-up work is no registration's
        spy = None
        if args.spy:
            spy = subprocess.Popen(
                ["py-spy", "record", "--nonblocking", "--rate", "1000", "--format", "raw"]
                + ["-o", str(args.spy), "-p", str(server.pid)],
                stdout=subprocess.DEVNULL,
            )
            time.sleep(1)  # attached before the first registration
        if args.strace:
            spy = subprocess.Popen(
                ["strace", "-c", "-f", "-o", str(args.strace), "-p", str(server.pid)],
                stderr=subprocess.DEVNULL,
            )
            time.sleep(1)

        async def run() -> None:
            fleet = Fleet(server.address, server.key("alice"), concurrency=8)
            try:
                for _ in range(args.rounds):
                    if profiler:
                        profiler.enable()
                    srv, loop, gen, rate = await _round(
                        fleet, args.nodes, server.pid, server.cpu_seconds
                    )
                    if profiler:
                        profiler.disable()
                    print(
                        f"{args.nodes} registrations: server {srv * 1e3:.2f} ms "
                        f"(event loop thread {loop * 1e3:.2f} ms), "
                        f"loader {gen * 1e3:.2f} ms CPU each, {rate:.0f}/s, "
                        f"load {os.getloadavg()[0]:.1f}",
                        flush=True,
                    )
            finally:
                await fleet.close()

        asyncio.run(run())
        if spy is not None:
            spy.send_signal(2)  # SIGINT: py-spy (or strace) writes its file and exits
            spy.wait(30)
    if profiler and args.loader_profile:
        profiler.dump_stats(str(args.loader_profile))


if __name__ == "__main__":
    main()
