"""Policy compile and per-node view cost for growing tailnets.

Run: python -m bench.bench_compile [--quick] [--json OUT] [--plot OUT.png]

For each (nodes, rules) size it builds a synthetic tailnet — users in groups,
tagged servers, ACL rules between groups, tags and ports — and measures:
* compile: `compile_tailnet` for the whole tailnet (what a commit costs);
* one view: building one node's full MapResponse from the compiled views
  (what a newly connecting client costs);
* map size: that MapResponse as JSON and after zstd.
Numbers are wall-clock on whatever machine runs it; the README records ours.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from datetime import UTC, datetime
from ipaddress import IPv4Address, IPv6Address
from typing import Any

import zstandard

from gitctl.policy import Topology, TopologyNode, TopologyUser, compile_tailnet, parse_policy
from server.mapper import MapContext, MapSession, build_map
from server.protocol.keys import DiscoPublic, MachinePublic, NodePublic
from server.store.model import Node
from server.views import compute_views
from server.wire import stable_user_id

SIZES = [(100, 50), (1000, 500), (5000, 2000)]
QUICK = [(100, 50), (1000, 500)]


def synthetic(nodes: int, rules: int, seed: int = 1) -> tuple[dict[str, Any], list[Node], list[tuple[int, str, str]]]:
    rng = random.Random(seed)
    n_users = max(4, nodes // 5)
    n_groups = max(2, n_users // 10)
    n_tags = max(2, nodes // 50)
    users = [(stable_user_id(f"u{i}"), f"u{i}", f"u{i}@example.com") for i in range(n_users)]
    groups = {f"group:g{g}": [u[2] for u in users if int(u[1][1:]) % n_groups == g] for g in range(n_groups)}
    tags = [f"tag:t{t}" for t in range(n_tags)]
    acls = []
    for _ in range(rules):
        src = rng.choice([rng.choice(list(groups)), rng.choice(users)[2], rng.choice(tags)])
        dst = rng.choice([rng.choice(tags), rng.choice(list(groups))])
        ports = rng.choice(["*", "22", "80,443", "8000-8100", "5432"])
        acls.append({"action": "accept", "src": [src], "dst": [f"{dst}:{ports}"]})
    policy = {"groups": groups, "tagOwners": {t: [users[0][2]] for t in tags}, "acls": acls}
    now = datetime(2026, 1, 1, tzinfo=UTC)
    out = []
    for i in range(1, nodes + 1):
        tagged = i % 4 == 0
        raw = i.to_bytes(4, "big") + bytes(28)
        out.append(
            Node(
                id=i,
                machine_key=MachinePublic(raw),
                node_key=NodePublic(raw),
                disco_key=DiscoPublic(raw),
                ipv4=IPv4Address(0x64400000 + i),
                ipv6=IPv6Address((0xFD7A115CA1E0 << 80) + i),
                hostname=f"node{i}",
                given_name=f"node{i}",
                user=None if tagged else users[i % n_users][1],
                tags=(tags[i % n_tags],) if tagged else (),
                auth_key_id=None,
                ephemeral=False,
                created=now,
                last_seen=None,
                key_expiry=None,
                hostinfo=json.dumps({"Hostname": f"node{i}", "OS": "linux", "NetInfo": {"PreferredDERP": 999}}),
                endpoints=(f"127.0.0.1:{40000 + i}",),
                capver=133,
            )
        )
    return policy, out, users


def measure(nodes: int, rules: int, repeat: int) -> dict[str, Any]:
    doc, registry, users = synthetic(nodes, rules)
    policy = parse_policy(doc)
    compile_times = []
    views = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        views = compute_views(policy, users, registry, {})
        compile_times.append(time.perf_counter() - t0)
    assert views is not None
    ctx = MapContext(
        domain="tailnet.example",
        nodes={n.id: n for n in registry},
        views=views,
        derp_map={},
        dns_config={},
        users={u[1]: (u[2], u[1]) for u in users},
        online=frozenset(n.id for n in registry),
    )
    now = datetime(2026, 1, 1, tzinfo=UTC)
    # The busiest node: the one that sees the most peers.
    busiest = max(registry, key=lambda n: len(views.by_node[n.id].peers))
    view_times = []
    body = b""
    for _ in range(repeat):
        t0 = time.perf_counter()
        state = build_map(ctx, busiest.id, now)
        assert state is not None
        msg = MapSession(busiest.id).next_message(state, now)
        body = json.dumps(msg, separators=(",", ":")).encode()
        view_times.append(time.perf_counter() - t0)
    compressed = zstandard.ZstdCompressor(level=1).compress(body)
    return {
        "nodes": nodes,
        "rules": rules,
        "compile_s": statistics.median(compile_times),
        "one_view_s": statistics.median(view_times),
        "busiest_peers": len(views.by_node[busiest.id].peers),
        "map_json_bytes": len(body),
        "map_zstd_bytes": len(compressed),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="skip the 5,000-node size")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", help="write results here")
    parser.add_argument("--plot", help="write a PNG plot here (needs matplotlib)")
    args = parser.parse_args()
    results = []
    print(f"{'nodes':>6} {'rules':>6} {'compile':>9} {'one view':>9} {'peers':>6} {'map JSON':>10} {'zstd':>9}")
    for nodes, rules in QUICK if args.quick else SIZES:
        r = measure(nodes, rules, args.repeat)
        results.append(r)
        print(
            f"{nodes:>6} {rules:>6} {r['compile_s'] * 1000:>7.0f}ms {r['one_view_s'] * 1000:>7.1f}ms "
            f"{r['busiest_peers']:>6} {r['map_json_bytes'] / 1e6:>8.2f}MB {r['map_zstd_bytes'] / 1e6:>7.2f}MB",
            flush=True,
        )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        xs = [r["nodes"] for r in results]
        ax.plot(xs, [r["compile_s"] for r in results], "o-", label="compile (whole tailnet)")
        ax.plot(xs, [r["one_view_s"] for r in results], "s-", label="one node's full map")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("nodes")
        ax.set_ylabel("seconds")
        ax.set_title("tailnetd policy compile and map cost")
        ax.legend()
        ax.grid(True, which="both", alpha=0.3)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)


if __name__ == "__main__":
    main()
