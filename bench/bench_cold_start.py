"""Cold start: `tailnetd serve` from exec until `/health` answers 200.

    python -m bench.bench_cold_start [--nodes 0 5000] [--runs 5] [--json docs/bench/cold_start.json]

For each node count: a fresh repo and data dir, the nodes written through the
store API directly (one user, the policy below), one start to create the keys
and migrate, then `--runs` timed starts on that data dir. /health is polled
every 5 ms over loopback, so the figure is within a few ms of when the server
could first answer, with bytecode cached as an installed server has it; the
server's CPU seconds until then are read from /proc (on a shared machine the
steadier figure). `--policy mesh` gives every node every other as a peer (the
first compile is then the most work); `--policy sparse` gives none.
`--importtime FILE` writes `python -X importtime` of one start.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.bench_derp_throughput import cpu_seconds
from bench.loadgen.stats import machine as machine_line
from bench.loadgen.stats import table
from server.protocol.keys import MachinePrivate, NodePrivate
from server.store import open_store
from server.store.model import Registration
from tests.e2e.harness import ROOT, TailnetRepo, free_port

USERS = "users:\n  - {name: alice, email: alice@example.com, display_name: Alice}\n"
POLICIES = {
    "mesh": '{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}\n',
    "sparse": '{"acls": []}\n',
}
TARGETS = {0: 0.3, 5000: 1.0}  # seconds, issue 11; judged on the median wall time


def populate(database: Path, nodes: int) -> None:
    store = open_store(database)
    now = datetime.now(UTC)
    try:
        for i in range(nodes):
            store.create_node(
                Registration(
                    machine_key=MachinePrivate.generate().public(),
                    node_key=NodePrivate.generate().public(),
                    hostname=f"cold{i}",
                    user="alice",
                    now=now,
                    endpoints=(f"127.0.0.1:{40000 + i % 20000}",),
                    capver=133,
                )
            )
    finally:
        store.close()


def _server_env(extra: dict[str, str] | None) -> dict[str, str]:
    """As installed: bytecode cached (an environment that turns the cache off
    would make every start compile the whole project from source)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return {**env, **(extra or {})}


def start_once(
    repo: Path, data: Path, extra_env: dict[str, str] | None = None
) -> tuple[float, float]:
    """Seconds from exec to /health, and the CPU seconds the server used by then."""
    port, stun = free_port(), free_port()
    args = [sys.executable, "-m", "server.cli", "serve", "--repo", str(repo), "--data", str(data)]
    args += ["--listen", f"127.0.0.1:{port}", "--stun-listen", f"127.0.0.1:{stun}"]
    with open(data.parent / "server.log", "ab") as log:
        begin = time.monotonic()
        proc = subprocess.Popen(
            args,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=_server_env(extra_env),
        )
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"tailnetd exited: {(data.parent / 'server.log').read_text()[-3000:]}"
                )
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as resp:
                    if resp.status == 200:
                        return time.monotonic() - begin, cpu_seconds(proc.pid)
            except OSError:
                pass
            time.sleep(0.005)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def measure(nodes: int, policy: str, runs: int, importtime: Path | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="tnd-cold-") as tmp_name:
        tmp = Path(tmp_name)
        repo = TailnetRepo(tmp / "repo", {"users.yaml": USERS, "policy.hujson": POLICIES[policy]})
        data = tmp / "data"
        start_once(repo.path, data)  # keys, migrations
        populate(data / "tailnetd.sqlite", nodes)
        start_once(repo.path, data)  # the first start after the nodes: warm the page cache
        walls, cpus = zip(*(start_once(repo.path, data) for _ in range(runs)), strict=True)
        if importtime:
            env = {"PYTHONIMPORTTIME": "1"}
            start_once(repo.path, data, env)
            importtime.write_text((tmp / "server.log").read_text())
    result = {
        "nodes": nodes,
        "policy": policy,
        "runs": runs,
        "median_s": round(statistics.median(walls), 3),
        "min_s": round(min(walls), 3),
        "max_s": round(max(walls), 3),
        "cpu_median_s": round(statistics.median(cpus), 3),
    }
    print(json.dumps(result), flush=True)
    return result


def render(results: list[dict[str, Any]]) -> str:
    rows = []
    for r in results:
        target = TARGETS.get(r["nodes"])
        verdict = ""
        if target is not None:
            verdict = f"<= {target} s: " + (
                "met" if r["median_s"] <= target else f"{r['median_s'] / target:.1f}x over"
            )
        rows.append(
            [
                f"{r['nodes']:,}",
                r["policy"],
                r["median_s"],
                f"{r['min_s']} - {r['max_s']}",
                r["cpu_median_s"],
                verdict,
            ]
        )
    header = ["nodes in the store", "policy", "median (s)", "min - max (s)", "CPU (s)", "target"]
    return table(rows, header)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nodes", type=int, nargs="*", default=[0, 5000])
    parser.add_argument("--policy", choices=sorted(POLICIES), nargs="*", default=["sparse", "mesh"])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--importtime", type=Path, help="write -X importtime of one start here")
    args = parser.parse_args()
    machine = machine_line()
    results = [
        measure(n, policy, args.runs, args.importtime) for n in args.nodes for policy in args.policy
    ]
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "runs": results}, indent=2) + "\n")
    print(f"\nmachine: {machine}\n")
    print(render(results))


if __name__ == "__main__":
    main()
