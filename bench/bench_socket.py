"""Socket-level benchmarks: a real `tailnetd serve` subprocess on loopback and
the load generator's simulated clients (bench/loadgen), every number taken
from what the clients observe in their own netmaps, or from the server's /proc.

    python -m bench.bench_socket --mesh 100 1000 --sparse 1000 5000 \\
        --json docs/bench/socket.json --plot docs/bench/socket.png

Mesh runs (every node may reach every node): registrations/s with every
registered node streaming, memory per streaming node, idle CPU, a policy
commit / a join / an endpoint change until every client has it, and (at the
largest mesh) a server restart until every client is streaming again. Sparse
runs (a policy that gives nodes no peers) push registrations toward 5,000
nodes and time a commit that changes every node's filter. Groups runs
(`--groups`: one user per 25 nodes, `autogroup:self`) time a commit, joins
and endpoint changes at sizes a full mesh cannot reach (bench/sparse_events.py).
`--profile DIR` runs the server under cProfile, timed by its CPU clock
(bench/cpuprofile.py), and writes its top functions per run. The client side
shares the machine with the server: on 2 cores the numbers are an upper bound
on the server's own latency.

Memory per streaming node (KiB, though labelled KB; the JSON's
"definitions" says the same): `kb_per_streaming_node` is the server's VmRSS
once all N stream minus before the first registration, over N: what the issue
targets, with every one-time cost of a first use (library code pages, caches,
the storm's heap holes) divided by N. `..._anon` is the same over RssAnon (no
file-backed pages). `..._marginal` is RssAnon at N streaming minus at N/2
(registered in two halves, the first settled), over N/2: one-time costs
cancel, so it is what one more node holds (in a mesh, with its share of the
per-peer state). `--no-marginal` registers all N in one go.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import pstats
import shutil
import signal
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Awaitable
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

from bench.loadgen.fleet import PHASES, At, Fleet, Watch
from bench.loadgen.local import LocalServer, local_server
from bench.loadgen.shards import NodeRef, ShardedFleet
from bench.loadgen.stats import summary, table
from bench.sparse_events import (
    commit_event,
    group_events,
    group_files,
    group_policy,
    sparse_commit_policy,
    user_keys,
)

USERS = "users:\n  - {name: alice, email: alice@example.com, display_name: Alice}\n"
MESH = '{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}\n'
SPARSE = '{"acls": []}\n'
MARKER_PORT = 47113  # a port only the commit's new rule names
TIMEOUT = 300.0
ENDPOINT_REPEATS = 10  # endpoint changes whose server CPU is averaged
# Seconds between a part's settling and the RssAnon that the marginal memory
# takes, at N/2 and at N, so that what follows a storm has happened at both
# ends, not at one by chance: the sweep (every 5 s) lets go of the storm's
# held deltas (up to 256 KB: 5 KiB a node of a 50-node half) once their 1 s
# hold is past, and the heap trim (checked every 2 s) gives back what it frees.
MARGINAL_PAUSE = 10.0
# At least one keep-alive period (50-58 s): a 10 s window right after the
# registrations ended before the first keep-alive was due when they were fast
# (0.8% at 5,000) and held the first ones when they were slow (7-9%).
IDLE_WINDOW = 60.0
# Registrations in flight. More is slower on this machine in a sparse run (64 in
# flight: a third of the rate of 4), so the rate is measured where it is best.
CONCURRENCY = 8
# In a full mesh every join is a wave (a delta to every client, for the server
# to send and the loader to decode), and a wave holds at most the joins in
# flight: at 1,000 nodes 32 in flight gave 1.8-2.4x fewer messages per client
# than 8 (75-93 against 166-183), 17-18 ms of server CPU per registration
# against 27-32 and about twice the rate (two pairs, docs/bench/NOTE-meshrate.md);
# once the loader read streams without h2, 64 gave 111-127/s against 32's 85-89
# (docs/bench/NOTE-loader.md). Real clients all come at once.
MESH_CONCURRENCY = 64
# Reconnects in flight after a restart (--reconnect-concurrency): real clients
# all come back at once, each after its own backoff.
RECONNECT_CONCURRENCY = 8
# The targets (issue 11), for the verdict column: (op, value) for a
# run of this kind and size (see `target`).
TARGETS = {
    "registrations_per_s": (">=", 500.0),
    "commit_p99_ms": ("<=", 300.0),
    "kb_per_streaming_node": ("<=", 150.0),
    "join_p99_ms": ("<=", 150.0),
    "endpoint_p99_ms": ("<=", 100.0),
}


def target(metric: str, kind: str, nodes: int) -> tuple[str, float]:
    """The issue's target for `metric` in a run of `kind` ("mesh"/"sparse")
    and `nodes`: registrations >= 500/s up to 1,000 nodes and >= 200/s at
    5,000, but >= 100/s for the 1,000-node full mesh; memory <= 150 KB per
    node in that mesh and <= 50 KiB otherwise; a policy commit reaches every
    client within 50 / 150 / 400 ms at 100 / 1,000 / 5,000 nodes, the
    1,000-node full mesh within 300 ms."""
    op, value = TARGETS[metric]
    mesh = kind == "mesh"
    if metric == "registrations_per_s":
        value = 100.0 if mesh and nodes >= 1000 else 500.0 if nodes <= 1000 else 200.0
    elif metric == "kb_per_streaming_node":
        value = 150.0 if mesh and nodes >= 1000 else 50.0
    elif metric == "commit_p99_ms":
        value = 300.0 if mesh and nodes == 1000 else 50.0 if nodes <= 100 else 150.0
        value = 400.0 if nodes >= 5000 else value
    return op, value


PEERS = {"mesh": "all", "sparse": "no", "groups": "24"}

# What the memory figures mean, written into the JSON beside the runs.
DEFINITIONS = {
    "kb_per_streaming_node": "KiB: (VmRSS with all N streaming - VmRSS before the first"
    " registration) / N; one-time costs of first use count as per-node",
    "kb_per_streaming_node_anon": "the same over RssAnon (no file-backed code pages)",
    "kb_per_streaming_node_idle": "the first, VmRSS taken after the idle window",
    "kb_per_streaming_node_marginal": "KiB: (RssAnon with N streaming - RssAnon with N/2"
    " streaming, registered first and settled) / (N - N/2), each read"
    f" {MARGINAL_PAUSE:g} s after its part settled: one-time costs cancel",
}


def commit_policy(port: int) -> str:
    return MESH.replace(
        "]}]}",
        f']}}, {{"action": "accept", "src": ["alice@example.com"], "dst": ["*:{port}"]}}]}}',
    )


async def _idle_cpu(server: LocalServer, window: float) -> float:
    before = server.cpu_seconds()
    await asyncio.sleep(window)
    return round((server.cpu_seconds() - before) / window * 100, 1)


async def register(
    server: LocalServer,
    nodes: int,
    *,
    mesh: bool,
    shards: int = 1,
    concurrency: int = CONCURRENCY,
    memtrace: Path | None = None,
    idle_window: float | None = IDLE_WINDOW,
    keys: list[str] | None = None,
    marginal: bool = False,
) -> tuple[Fleet | ShardedFleet, dict[str, Any]]:
    """Register `nodes` clients, all streaming. `shards` > 1, or a mesh: the
    clients are spread over that many load-generator processes (a mesh's
    clients decode every join's delta: in the parent process, their work
    would be timed with the parent's own). With
    `memtrace` (the server's TAILNETD_TRACEMALLOC directory): tracemalloc
    snapshots before registration, once all are registered and streaming, and
    after the idle window. `idle_window` None: no idle CPU measured (bench_idle
    measures its own). `keys`: the n-th node registers with `keys[n]`.
    `marginal`: registered in two halves, RssAnon taken between them (the
    module's doc)."""

    async def snapshot() -> None:
        if memtrace is not None:
            await asyncio.to_thread(server.memory_snapshot, memtrace)

    fleet: Fleet | ShardedFleet
    key = keys[0] if keys else server.key("alice")
    if shards > 1 or mesh:
        fleet = ShardedFleet(server.address, key, shards=shards, concurrency=concurrency)
        await fleet.ready()
    else:
        fleet = Fleet(server.address, key, concurrency=concurrency)
    # The storm starts after the server's one-off start-up work (its CPU and
    # the RSS of the modules it loads), not inside it.
    await asyncio.to_thread(server.wait_settled)
    await snapshot()
    rss0, anon0 = server.rss_bytes(), server.anon_rss_bytes()
    up: list[float] = []
    phases: list[tuple[float, ...]] = []
    elapsed = server_cpu = loader_cpu = 0.0
    messages, anon_half = 0, None
    for first, count in halves(nodes, marginal=marginal):
        if first:  # the previous part streaming and settled: the marginal's base
            await _settle(fleet, first, mesh=mesh)
            await asyncio.sleep(MARGINAL_PAUSE)
            anon_half = server.anon_rss_bytes()
        # Only the registrations are timed, not the settle between the parts.
        start, loader, served = time.monotonic(), time.process_time(), server.cpu_seconds()
        part = keys[first : first + count] if keys else None
        part_up, shard_cpu, part_phases, part_messages = await _add(fleet, count, part)
        elapsed += time.monotonic() - start
        server_cpu += server.cpu_seconds() - served
        loader_cpu += time.process_time() - loader + shard_cpu
        up += part_up
        phases += part_phases
        messages += part_messages
    await _settle(fleet, nodes, mesh=mesh)
    rss, anon = server.rss_bytes(), server.anon_rss_bytes()
    grown = 0
    if anon_half is not None:
        await asyncio.sleep(MARGINAL_PAUSE)
        grown = server.anon_rss_bytes() - anon_half
    await snapshot()
    idle_cpu = None if idle_window is None else await _idle_cpu(server, idle_window)
    rss_idle = server.rss_bytes()  # after the idle window: what the burst left
    await snapshot()
    result: dict[str, Any] = {
        "nodes": nodes,
        "concurrency": concurrency,
        "loader_processes": shards,
        "registrations_per_s": round(nodes / elapsed, 1),
        "register_loader_cpu_s": round(loader_cpu, 2),
        "register_loader_cpu_ms_per_node": round(loader_cpu / nodes * 1000, 2),
        "register_server_cpu_ms_per_node": round(server_cpu / nodes * 1000, 2),
        "load_average": round(os.getloadavg()[0], 1),
        "register_to_first_map": summary(up),
        # Map messages the clients applied while registering, per registration:
        # how many waves the joins took (each costs the server and the loader).
        "register_messages_per_node": round(messages / nodes, 1),
        "server_rss_mb": round(rss / 2**20, 1),
        "kb_per_streaming_node": round((rss - rss0) / nodes / 1024, 1),
        # The same without file-backed pages: at 100 nodes the libraries' code
        # that the first registrations fault in is ~7 of the KiB above.
        "kb_per_streaming_node_anon": round((anon - anon0) / nodes / 1024, 1),
    }
    if anon_half is not None:
        result["kb_per_streaming_node_marginal"] = round(grown / (nodes - nodes // 2) / 1024, 1)
    if phases:
        # Where a registration's seconds go, step by step (p50 / p99 ms each).
        steps = zip(*phases, strict=True)
        result["register_phases"] = {
            name: {k: v for k, v in summary(list(step)).items() if k != "n"}
            for name, step in zip(PHASES, steps, strict=True)
        }
    if idle_window is not None:
        result["kb_per_streaming_node_idle"] = round((rss_idle - rss0) / nodes / 1024, 1)
        result["idle_cpu_percent"] = idle_cpu
    return fleet, result


def halves(nodes: int, *, marginal: bool) -> list[tuple[int, int]]:
    """The parts `register` adds, each (index of its first node, count): two
    halves when the marginal memory is measured between them, else one."""
    if not marginal or nodes < 2:
        return [(0, nodes)]
    return [(0, nodes // 2), (nodes // 2, nodes - nodes // 2)]


async def _settle(fleet: Fleet | ShardedFleet, streaming: int, *, mesh: bool) -> None:
    """In a mesh, until each of the `streaming` clients holds every other
    (registrations raced first maps); other runs' figures are taken as is."""
    if mesh:
        assert isinstance(fleet, ShardedFleet)
        await fleet.settled(streaming - 1, TIMEOUT)


async def mesh_events(
    server: LocalServer, fleet: ShardedFleet, *, profile_moves: bool = False
) -> dict[str, Any]:
    """A commit, a join and endpoint changes in a full mesh; `profile_moves`:
    the server (under bench/windowprof.py) is profiled over the endpoint
    changes only."""
    out: dict[str, Any] = {}

    def committed() -> Awaitable[At]:
        async def act() -> At:
            await asyncio.to_thread(
                server.commit, {"policy.hujson": commit_policy(MARKER_PORT)}, "one more rule"
            )
            return At(fleet.clock())

        return act()

    marker = Watch("top_mentions", ("PacketFilter", str(MARKER_PORT)))
    out["commit"] = summary(await fleet.observe(marker, committed, timeout=TIMEOUT))
    newcomer = await fleet.new_node()
    served = server.cpu_seconds()
    out["join"] = summary(
        await fleet.observe(
            Watch("has_peer_key", (newcomer.node_key,)),
            lambda: fleet.bring_up(newcomer),
            timeout=TIMEOUT,
            exclude=newcomer,
        )
    )
    # Server CPU until every peer had it (a clock tick is 10 ms: coarse for one event).
    out["join_server_cpu_ms"] = round((server.cpu_seconds() - served) * 1000, 1)
    mover = await fleet.node(0, 0)
    if profile_moves:
        os.kill(server.pid, signal.SIGUSR1)
    first = server.cpu_seconds()
    out["endpoint_change"] = summary(
        await _move(fleet, mover, ["127.0.0.1:41641", "127.0.0.2:41641"])
    )
    changes = [server.cpu_seconds()]
    # More changes, one after another, each until every peer has it; the
    # per-peer figure divides their sum, as one change is only a few ms.
    for n in range(ENDPOINT_REPEATS - 1):
        await _move(fleet, mover, [f"127.0.0.{n + 3}:41641", "127.0.0.2:41641"])
        changes.append(server.cpu_seconds())
    per_peer = (changes[-1] - first) / ENDPOINT_REPEATS / (fleet.count - 1)
    out["endpoint_server_cpu_us_per_peer"] = round(per_peer * 1e6, 1)
    # Each change's server CPU (the first follows the join's wave).
    out["endpoint_server_cpu_us_per_change"] = [
        round((b - a) * 1e6) for a, b in pairwise([first, *changes])
    ]
    if profile_moves:
        os.kill(server.pid, signal.SIGUSR1)
        await asyncio.sleep(3)  # the stats written
    return out


async def _move(fleet: ShardedFleet, mover: NodeRef, endpoints: list[str]) -> list[float]:
    """`mover`'s endpoints change; seconds until each other node has it."""
    return await fleet.observe(
        Watch("peer_endpoints", (mover.node_id or 0, endpoints)),
        lambda: fleet.set_endpoints(mover, endpoints),
        timeout=TIMEOUT,
        exclude=mover,
    )


async def _add(
    fleet: Fleet | ShardedFleet, nodes: int, keys: list[str] | None = None
) -> tuple[list[float], float, list[tuple[float, ...]], int]:
    """Per node seconds to its first map, the shards' CPU seconds (0
    in-process), per registration the seconds of each step (fleet.PHASES),
    and the map messages the clients applied. `keys`: one node per key."""
    if isinstance(fleet, ShardedFleet):
        done = await (fleet.add_keyed(keys) if keys else fleet.add(nodes))
        return done.seconds, done.cpu_s, done.phases, done.messages
    before, applied = len(fleet.phases), sum(n.netmap.messages for n in fleet.nodes)
    seconds = await fleet.add(nodes, keys)
    applied = sum(n.netmap.messages for n in fleet.nodes) - applied
    return seconds, 0.0, fleet.phases[before:], applied


async def restart(
    server: LocalServer,
    fleet: Fleet | ShardedFleet,
    launcher: list[str] | None = None,
    *,
    concurrency: int = RECONNECT_CONCURRENCY,
) -> dict[str, Any]:
    """Every client reconnects at once after a restart: seconds until all stream."""
    begin, loader = time.monotonic(), time.process_time()
    serving = await asyncio.to_thread(server.restart, launcher)
    if isinstance(fleet, ShardedFleet):
        done = await fleet.reconnect(concurrency)
        shard_cpu, retries, seconds = done.cpu_s, done.retries, done.seconds
    else:
        seconds = await fleet.reconnect(fleet.nodes, concurrency=concurrency)
        shard_cpu, retries = 0.0, sum(n.retries for n in fleet.nodes)
    took = time.monotonic() - begin
    return {
        "reconnect_concurrency": concurrency,
        "stop_s": round(server.stopped_in, 2),  # SIGTERM until the old server exited
        "cold_start_s": round(serving, 2),
        "restart_to_all_streaming_s": round(took, 2),
        "reconnect_seconds": summary(seconds),  # each client: first attempt -> first map
        "restart_server_cpu_s": round(server.cpu_seconds(), 2),  # start-up + every reconnect
        # The load generator's own CPU over the same seconds (every process): near
        # `took` times its processes, it set the pace.
        "restart_loader_cpu_s": round(time.process_time() - loader + shard_cpu, 2),
        "reconnect_retries": retries,
    }


def run_one(
    nodes: int,
    *,
    mesh: bool,
    groups: bool = False,
    restart_too: bool,
    profile: Path | None,
    profile_restart: bool = False,
    shards: int = 1,
    reconnect_concurrency: int = RECONNECT_CONCURRENCY,
    concurrency: int = CONCURRENCY,
    memtrace: Path | None = None,
    events_profile: Path | None = None,
    commit_profile: Path | None = None,
    moves_profile: Path | None = None,
    server_log: Path | None = None,
    spy_commit: Path | None = None,
    marginal: bool = True,
) -> dict[str, Any]:
    kind = "mesh" if mesh else "groups" if groups else "sparse"
    name = f"{kind}-{nodes}{'-restart' if profile_restart else ''}"
    # CPU clock, not wall clock: the machine is shared (bench/cpuprofile.py).
    launcher = ["-m", "bench.cpuprofile", "-o", str(profile / f"{name}.prof")] if profile else None
    if events_profile:  # the joins and endpoint changes only (bench/windowprof.py)
        launcher = ["-m", "bench.windowprof", str(events_profile / f"{name}-events.prof")]
    if moves_profile:  # the endpoint changes only
        launcher = ["-m", "bench.windowprof", str(moves_profile / f"{name}-moves.prof")]
        events_profile = None
    if commit_profile:  # the policy commit's fan-out only
        launcher = ["-m", "bench.windowprof", str(commit_profile / f"{name}-commit.prof")]
        events_profile = None
    first, again = (None, launcher) if profile_restart else (launcher, None)
    policy = MESH if mesh else SPARSE
    traced = memtrace / name if memtrace else None
    env = {"TAILNETD_TRACEMALLOC": str(traced)} if traced else None
    files = {"users.yaml": USERS, "policy.hujson": policy}
    users: list[str] = []
    if groups:
        files, users = group_files(nodes)
    with local_server(files, launcher=first, env=env) as server:
        cold_empty = server.started_in
        keys = user_keys(server, users) if users else []

        async def commit(fleet: Fleet | ShardedFleet, policy: str) -> dict[str, Any]:
            if commit_profile:
                os.kill(server.pid, signal.SIGUSR1)
            spy = _spy(server.pid, spy_commit / f"{name}-commit.txt") if spy_commit else None
            if spy is not None:
                await asyncio.sleep(SPY_ATTACH)
            try:
                # Wall-clock bounds, to find the commit's window in the server's log.
                began = _stamp()
                done = await commit_event(server, fleet, policy)
                return {**done, "commit_window_utc": [began, _stamp()]}
            finally:
                if spy is not None:
                    spy.send_signal(signal.SIGINT)
                    await asyncio.to_thread(spy.wait, 60)
                if commit_profile:
                    os.kill(server.pid, signal.SIGUSR1)
                    await asyncio.sleep(3)  # the stats written

        async def scenario() -> dict[str, Any]:
            fleet, result = await register(
                server,
                nodes,
                mesh=mesh,
                shards=shards,
                concurrency=concurrency,
                memtrace=traced,
                keys=[keys[n % len(keys)] for n in range(nodes)] if keys else None,
                marginal=marginal,
            )
            try:
                if isinstance(fleet, ShardedFleet) and mesh:
                    moves = moves_profile is not None
                    result.update(await mesh_events(server, fleet, profile_moves=moves))
                elif groups:
                    result.update(await commit(fleet, group_policy(MARKER_PORT)))
                    if events_profile:
                        os.kill(server.pid, signal.SIGUSR1)
                    moves = moves_profile is not None and not commit_profile
                    result.update(await group_events(server, fleet, keys, profile_moves=moves))
                    if events_profile:
                        os.kill(server.pid, signal.SIGUSR1)
                        await asyncio.sleep(3)  # the stats written
                else:
                    result.update(await commit(fleet, sparse_commit_policy()))
                if restart_too:
                    result.update(
                        await restart(server, fleet, again, concurrency=reconnect_concurrency)
                    )
                return result
            finally:
                await fleet.close()

        try:
            result = asyncio.run(scenario())
        finally:
            if server_log:  # the temp dir goes with the server
                server.process.stop()
                shutil.copyfile(server.tmp / "server.log", server_log / f"{name}.log")
    result.update(kind=kind, cold_start_empty_s=round(cold_empty, 2))
    if profile:
        _write_profile(profile / f"{name}.prof")
    if traced:
        memtrace_report(traced, nodes)
    print(json.dumps(result), flush=True)
    return result


SPY_ATTACH = 2.0  # seconds for py-spy to attach before the window opens


def _spy(pid: int, out: Path) -> subprocess.Popen[bytes]:
    """py-spy sampling `pid` (every thread, not pausing it: a cProfile of a
    fan-out charges its ~1 us a call to the many small calls) until SIGINT,
    collapsed stacks to `out` (bench/spyreport.py reads them)."""
    spy = Path(sys.executable).with_name("py-spy")
    command = [str(spy), "record", "--pid", str(pid), "--rate", str(SPY_RATE)]
    command += ["--nonblocking", "--threads", "--format", "raw", "-o", str(out)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


SPY_RATE = 1000  # samples a second


def _stamp() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _write_profile(path: Path) -> None:
    if not path.exists():
        return
    with path.with_suffix(".txt").open("w") as out:
        pstats.Stats(str(path), stream=out).sort_stats("cumulative").print_stats(40)


def memtrace_report(directory: Path, nodes: int, top: int = 40) -> Path:
    """What grew between the snapshots `register` took (0: before, 1: all
    streaming, 2: after the idle window), by line and by file, per node."""
    snaps = [
        tracemalloc.Snapshot.load(str(p))
        for p in sorted(directory.glob("snap-*.tracemalloc"), key=lambda p: int(p.stem[5:]))
    ]
    heads = [p.read_text().split("\n\n")[0] for p in sorted(directory.glob("snap-*.txt"))]
    out = [f"{nodes} nodes; snapshot heads (rss, traced, glibc heap, gc):"]
    out += [f"-- snap {i}\n{head}" for i, head in enumerate(heads)]
    for i in range(1, len(snaps)):
        for key in ("filename", "lineno"):
            diff = snaps[i].compare_to(snaps[0], key)
            grew = sum(d.size_diff for d in diff)
            out.append(f"\n== snap {i} - snap 0 by {key}: {grew / nodes:,.0f} B per node")
            for d in diff[:top]:
                frame = d.traceback[0]
                where = frame.filename if key == "filename" else f"{frame.filename}:{frame.lineno}"
                per = (
                    f"{d.size_diff / nodes:>9,.0f} B/node {d.count_diff / nodes:>7.2f} blocks/node"
                )
                out.append(f"{per}  {where}")
    report = directory / "report.txt"
    report.write_text("\n".join(out) + "\n")
    return report


def _verdict(metric: str, value: float, kind: str, nodes: int) -> str:
    op, goal = target(metric, kind, nodes)
    if op == ">=":
        return f"{op} {goal:g}: " + ("met" if value >= goal else f"{goal / value:.1f}x short")
    return f"{op} {goal:g}: " + ("met" if value <= goal else f"{value / goal:.1f}x over")


def render(results: list[dict[str, Any]]) -> str:
    rows: list[list[object]] = []
    for r in results:
        label = f"{r['kind']} {r['nodes']:,}"
        size = (r["kind"], r["nodes"])
        rows.append(
            [
                label,
                "registrations/s (all streaming)",
                r["registrations_per_s"],
                _verdict("registrations_per_s", r["registrations_per_s"], *size),
            ]
        )
        rows.append(
            [
                label,
                "memory per streaming node (KB)",
                r["kb_per_streaming_node"],
                _verdict("kb_per_streaming_node", r["kb_per_streaming_node"], *size),
            ]
        )
        if "kb_per_streaming_node_anon" in r:
            anon = r["kb_per_streaming_node_anon"]
            rows.append([label, "... of it anonymous (no code pages) (KB)", anon, ""])
        if "kb_per_streaming_node_marginal" in r:
            more = r["kb_per_streaming_node_marginal"]
            rows.append([label, "... marginal, N/2 -> N streaming (anon KB)", more, ""])
        rows.append(
            [label, "server CPU per registration (ms)", r["register_server_cpu_ms_per_node"], ""]
        )
        if "kb_per_streaming_node_idle" in r:
            rows.append(
                [
                    label,
                    f"... after {IDLE_WINDOW:g} s idle (KB)",
                    r["kb_per_streaming_node_idle"],
                    "",
                ]
            )
        if "idle_cpu_percent" in r:
            idle = r["idle_cpu_percent"]
            rows.append([label, "idle CPU, all streaming (% of a core)", idle, ""])
        if "topology" in r:
            rows.append([label, "topology of the change rows", r["topology"], ""])
        rows.append([label, "cold start, empty (s)", r["cold_start_empty_s"], ""])
        for key, metric, name in (
            ("commit", "commit_p99_ms", "policy commit -> every client"),
            ("join", "join_p99_ms", "a node joins -> every peer"),
            ("endpoint_change", "endpoint_p99_ms", "endpoints change -> every peer"),
        ):
            if key in r:
                s = r[key]
                rows.append(
                    [
                        label,
                        f"{name} p50 / p99 (ms)",
                        f"{s['p50_ms']} / {s['p99_ms']}",
                        _verdict(metric, s["p99_ms"], *size),
                    ]
                )
        if "commit_server_cpu_ms" in r:
            cpu = r["commit_server_cpu_ms"]
            rows.append([label, "a commit: server CPU until every client has it (ms)", cpu, ""])
        if "join_server_cpu_ms" in r:
            rows.append([label, "a join: server CPU (ms)", r["join_server_cpu_ms"], ""])
        if "endpoint_server_cpu_us_per_peer" in r:
            us = r["endpoint_server_cpu_us_per_peer"]
            verdict = "<= 20: met" if us <= 20 else f"<= 20: {us / 20:.1f}x over"
            rows.append([label, "endpoints change: server CPU per peer (us)", us, verdict])
        if "cold_start_s" in r:
            rows.append([label, "cold start with these nodes (s)", r["cold_start_s"], ""])
            rows.append(
                [
                    label,
                    "restart -> every client streaming (s)",
                    r["restart_to_all_streaming_s"],
                    "",
                ]
            )
            if "restart_server_cpu_s" in r:
                rows.append(
                    [label, "restart: server CPU until then (s)", r["restart_server_cpu_s"], ""]
                )
            if "restart_loader_cpu_s" in r:
                rows.append(
                    [label, "restart: load generator CPU (s)", r["restart_loader_cpu_s"], ""]
                )
    return table(rows, ["run", "measure", "value", "target"])


def plot(results: list[dict[str, Any]], path: Path, machine: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for kind, marker in (("mesh", "o"), ("sparse", "s"), ("groups", "^")):
        rs = [r for r in results if r["kind"] == kind]
        if rs:
            left.plot(
                [r["nodes"] for r in rs],
                [r["registrations_per_s"] for r in rs],
                marker=marker,
                label=f"{kind} (policy: {PEERS[kind]} peers)",
            )
    left.axhline(500, color="grey", linestyle="--", label="target 500/s")
    left.set(xlabel="nodes, all streaming", ylabel="registrations/s", title="Registrations")
    left.legend()
    mesh = [r for r in results if r["kind"] == "mesh"]
    for key, target in (("commit", 300), ("join", 150), ("endpoint_change", 100)):
        xs = [r["nodes"] for r in mesh if key in r]
        if xs:
            line = right.plot(
                xs,
                [r[key]["p99_ms"] for r in mesh if key in r],
                marker="o",
                label=f"{key.replace('_', ' ')} p99 (target {target} ms)",
            )
            right.axhline(target, color=line[0].get_color(), linestyle=":", linewidth=1)
    right.set(
        xlabel="nodes (full mesh)",
        ylabel="ms until every client has it",
        yscale="log",
        title="Change -> every client",
    )
    right.legend(fontsize=8)
    fig.suptitle(f"tailnetd over loopback sockets ({machine})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _cores() -> int:
    import os

    return os.cpu_count() or 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mesh", type=int, nargs="*", default=[100, 1000])
    parser.add_argument("--sparse", type=int, nargs="*", default=[1000, 5000])
    parser.add_argument(
        "--groups",
        type=int,
        nargs="*",
        default=[],
        help="runs of one user per 25 nodes (autogroup:self): commit, joins, endpoint changes",
    )
    parser.add_argument("--json", type=Path)
    parser.add_argument("--plot", type=Path)
    parser.add_argument("--profile", type=Path, help="run the server under cProfile, stats here")
    parser.add_argument(
        "--restart-sparse", action="store_true", help="restart at the largest sparse run too"
    )
    parser.add_argument(
        "--profile-restart",
        action="store_true",
        help="with --profile: profile the restarted server (the reconnect storm), not the first",
    )
    parser.add_argument(
        "--shards",
        type=int,
        default=1,
        help="spread the simulated clients over this many processes (a mesh always uses"
        " at least one besides this one)",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        help=f"registrations in flight over all shards (default {MESH_CONCURRENCY} in a mesh,"
        f" {CONCURRENCY} in a sparse run)",
    )
    parser.add_argument(
        "--reconnect-concurrency",
        type=int,
        default=RECONNECT_CONCURRENCY,
        help="reconnects in flight after a restart (over all shards)",
    )
    parser.add_argument(
        "--no-restart", action="store_true", help="skip the restart at the largest mesh run"
    )
    parser.add_argument(
        "--tracemalloc",
        type=Path,
        help="trace the server's allocations; snapshots and a report per run under this dir",
    )
    parser.add_argument(
        "--profile-events",
        type=Path,
        help="groups runs: profile the server over the joins and endpoint changes only",
    )
    parser.add_argument(
        "--profile-commit",
        type=Path,
        help="sparse and groups runs: profile the server over the policy commit only",
    )
    parser.add_argument(
        "--profile-moves",
        type=Path,
        help="mesh and groups runs: profile the server over the endpoint changes only",
    )
    parser.add_argument(
        "--spy-commit",
        type=Path,
        help="sparse and groups runs: sample the server with py-spy over the commit"
        " (pip install py-spy)",
    )
    parser.add_argument(
        "--server-log", type=Path, help="keep each run's server log here (NAME.log)"
    )
    parser.add_argument(
        "--no-marginal",
        action="store_true",
        help="register all N at once: no kb_per_streaming_node_marginal (RssAnon at N"
        " streaming minus at N/2, over N/2: what one more node holds, one-time costs cancelled)",
    )
    parser.add_argument("--replot", type=Path, help="no runs: table and plot from this JSON")
    args = parser.parse_args()
    folders = (args.profile, args.profile_events, args.profile_commit, args.profile_moves)
    for folder in (*folders, args.server_log, args.spy_commit):
        if folder:
            folder.mkdir(parents=True, exist_ok=True)
    machine = (
        f"{platform.processor() or platform.machine()}, {_cores()} cores (shared), "
        f"{platform.python_implementation()} {platform.python_version()}"
    )
    results: list[dict[str, Any]] = []

    def record(result: dict[str, Any]) -> None:
        results.append(result)
        if args.json:  # after every run: a long sweep cut short keeps what it measured
            document = {"machine": machine, "definitions": DEFINITIONS, "runs": results}
            args.json.write_text(json.dumps(document, indent=2) + "\n")

    if args.replot:
        data = json.loads(args.replot.read_text())
        machine, results = data["machine"], data["runs"]
    biggest = -1 if args.no_restart else max(args.mesh, default=0)
    for n in [] if args.replot else args.mesh:
        record(
            run_one(
                n,
                mesh=True,
                restart_too=n == biggest,
                profile=args.profile,
                profile_restart=args.profile_restart and n == biggest,
                shards=args.shards,
                reconnect_concurrency=args.reconnect_concurrency,
                concurrency=args.concurrency or MESH_CONCURRENCY,
                memtrace=args.tracemalloc,
                marginal=not args.no_marginal,
                moves_profile=args.profile_moves,
                server_log=args.server_log,
            )
        )
    sparse_biggest = max(args.sparse, default=0) if args.restart_sparse else -1
    for n in [] if args.replot else args.sparse:
        restart_too = n == sparse_biggest
        record(
            run_one(
                n,
                mesh=False,
                restart_too=restart_too,
                profile=args.profile,
                profile_restart=args.profile_restart and restart_too,
                shards=args.shards,
                reconnect_concurrency=args.reconnect_concurrency,
                concurrency=args.concurrency or CONCURRENCY,
                memtrace=args.tracemalloc,
                marginal=not args.no_marginal,
                commit_profile=args.profile_commit,
                server_log=args.server_log,
            )
        )
    for n in [] if args.replot else args.groups:
        record(
            run_one(
                n,
                mesh=False,
                groups=True,
                restart_too=False,
                profile=args.profile,
                shards=args.shards,
                memtrace=args.tracemalloc,
                marginal=not args.no_marginal,
                events_profile=args.profile_events,
                commit_profile=args.profile_commit,
                moves_profile=args.profile_moves,
                server_log=args.server_log,
                spy_commit=args.spy_commit,
            )
        )
    print(f"\nmachine: {machine}\n")
    print(render(results))
    if args.plot:
        plot(results, args.plot, machine)


if __name__ == "__main__":
    main()
