"""Policy compile and per-node view cost for growing tailnets.

Run: python -m bench.bench_compile [--quick] [--json OUT] [--plot OUT.png]

For each (nodes, rules) size it builds a synthetic tailnet — users in groups,
tagged servers, ACL rules between groups, tags and ports — and measures:
* index: `compute_views` for the whole tailnet (what a commit costs): rules
  resolved to node sets; no node's view is built yet;
* 1st view: the busiest node's view (filter, SSH, peers), built on demand;
* map: that node's full MapResponse as JSON (what a connecting client costs);
* all views: every node's view (every node connected; what `gitctl compile` costs);
* join: one more node registers: recompile reusing the previous views, and
  find the nodes whose maps change ("woken": the sessions the server wakes);
  refresh: rebuilding those nodes' views;
* map size: the busiest node's MapResponse as JSON and after zstd.
Numbers are wall-clock on whatever machine runs it; the README records ours.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from ipaddress import IPv4Address, IPv6Address
from typing import Any, TypeVar

import zstandard

from gitctl.policy import parse_policy
from server.protocol.keys import DiscoPublic, MachinePublic, NodePublic
from server.store.model import Node
from server.tailnet.expiries import Expiries
from server.tailnet.mapper import MapContext
from server.tailnet.nodejson import PeerEntries
from server.tailnet.session import MapSession, Wake
from server.tailnet.views import compute_views
from server.wire import Hostinfo, NetInfo, stable_user_id

SIZES = [(100, 50), (1000, 500), (5000, 2000)]
QUICK = [(100, 50), (1000, 500)]
NOW = datetime(2026, 1, 1, tzinfo=UTC)
T = TypeVar("T")


def synthetic(
    nodes: int, rules: int, seed: int = 1
) -> tuple[dict[str, Any], list[Node], list[tuple[int, str, str]]]:
    rng = random.Random(seed)
    n_users = max(4, nodes // 5)
    n_groups = max(2, n_users // 10)
    n_tags = max(2, nodes // 50)
    users = [(stable_user_id(f"u{i}"), f"u{i}", f"u{i}@example.com") for i in range(n_users)]
    groups = {
        f"group:g{g}": [u[2] for u in users if int(u[1][1:]) % n_groups == g]
        for g in range(n_groups)
    }
    tags = [f"tag:t{t}" for t in range(n_tags)]
    acls = []
    for _ in range(rules):
        src = rng.choice([rng.choice(list(groups)), rng.choice(users)[2], rng.choice(tags)])
        dst = rng.choice([rng.choice(tags), rng.choice(list(groups))])
        ports = rng.choice(["*", "22", "80,443", "8000-8100", "5432"])
        acls.append({"action": "accept", "src": [src], "dst": [f"{dst}:{ports}"]})
    policy = {"groups": groups, "tagOwners": {t: [users[0][2]] for t in tags}, "acls": acls}
    return policy, [make_node(i, users, tags) for i in range(1, nodes + 1)], users


def make_node(i: int, users: list[tuple[int, str, str]], tags: list[str]) -> Node:
    """Node `i` of the synthetic tailnet: every fourth one is a tagged server."""
    tagged = i % 4 == 0
    raw = i.to_bytes(4, "big") + bytes(28)
    return Node(
        id=i,
        machine_key=MachinePublic(raw),
        node_key=NodePublic(raw),
        disco_key=DiscoPublic(raw),
        ipv4=IPv4Address(0x64400000 + i),
        ipv6=IPv6Address((0xFD7A115CA1E0 << 80) + i),
        hostname=f"node{i}",
        given_name=f"node{i}",
        user=None if tagged else users[i % len(users)][1],
        tags=(tags[i % len(tags)],) if tagged else (),
        auth_key_id=None,
        ephemeral=False,
        created=NOW,
        last_seen=None,
        key_expiry=None,
        hostinfo=Hostinfo(hostname=f"node{i}", os="linux", net_info=NetInfo(preferred_derp=999)),
        endpoints=(f"127.0.0.1:{40000 + i}",),
        capver=133,
    )


def _timed(fn: Callable[[], T]) -> tuple[float, T]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def _once(
    policy: Any, users: list[tuple[int, str, str]], registry: list[Node], busiest: int, joiner: Node
) -> dict[str, Any]:
    """One cold run: compile, first view, full map, every view, a join."""
    by_id = {n.id: n for n in registry}
    out: dict[str, Any] = {}
    out["index_s"], views = _timed(lambda: compute_views(policy, users, registry, {}))
    out["first_view_s"], view = _timed(lambda: views.get(busiest))
    assert view is not None
    out["busiest_peers"] = len(view.peers)
    ctx = MapContext(
        domain="tailnet.example",
        nodes=by_id,
        views=views,
        derp_map={},
        dns_config={},
        users={u[1]: (u[2], u[1]) for u in users},
        online=frozenset(by_id),
        entries=(entries := PeerEntries("tailnet.example")),
        expiries=Expiries(entries.log),
    )

    def one_map() -> bytes:
        msg = MapSession(busiest).step(ctx, Wake(full=True), NOW)
        assert msg is not None
        return msg

    out["map_s"], out["body"] = _timed(one_map)
    # Every node connected: every view built (what `gitctl compile` costs too).
    out["all_views_s"], _ = _timed(lambda: [views.get(i) for i in by_id])
    # One node joins: recompile reusing the views, then rebuild the views of
    # the nodes it affects (the sessions the server wakes).
    out["join_s"], after = _timed(
        lambda: compute_views(
            policy, users, [*registry, joiner], {}, previous=views, previous_nodes=by_id
        )
    )
    assert after.changed is not None
    out["join_changed"] = len(after.changed)
    out["join_refresh_s"], _ = _timed(lambda: [after.get(i) for i in after.changed or ()])
    return out


def measure(nodes: int, rules: int, repeat: int) -> dict[str, Any]:
    doc, registry, users = synthetic(nodes, rules)
    policy = parse_policy(doc)
    # The busiest node (the one that sees the most peers), found on a throwaway
    # compile so that the timed ones start cold.
    probe = compute_views(policy, users, registry, {})
    busiest = max(registry, key=lambda n: len(probe.visible_to(n.id))).id
    joiner = make_node(nodes + 1, users, sorted(doc["tagOwners"]))
    runs = [_once(policy, users, registry, busiest, joiner) for _ in range(repeat)]
    out: dict[str, Any] = {"nodes": nodes, "rules": rules}
    for key in runs[0]:
        if key.endswith("_s"):
            out[key] = statistics.median(r[key] for r in runs)
    body = runs[-1]["body"]
    out["join_changed"] = runs[-1]["join_changed"]
    out["busiest_peers"] = runs[-1]["busiest_peers"]
    out["map_json_bytes"] = len(body)
    out["map_zstd_bytes"] = len(zstandard.ZstdCompressor(level=1).compress(body))
    return out


COLUMNS = (
    # (header, width, format of one result)
    ("nodes", 6, lambda r: f"{r['nodes']}"),
    ("rules", 6, lambda r: f"{r['rules']}"),
    ("index", 8, lambda r: f"{r['index_s'] * 1000:.0f}ms"),
    ("1st view", 9, lambda r: f"{r['first_view_s'] * 1000:.1f}ms"),
    ("map", 8, lambda r: f"{r['map_s'] * 1000:.1f}ms"),
    ("all views", 10, lambda r: f"{r['all_views_s'] * 1000:.0f}ms"),
    ("join", 8, lambda r: f"{r['join_s'] * 1000:.0f}ms"),
    ("woken", 6, lambda r: f"{r['join_changed']}"),
    ("refresh", 8, lambda r: f"{r['join_refresh_s'] * 1000:.0f}ms"),
    ("peers", 6, lambda r: f"{r['busiest_peers']}"),
    ("map JSON", 9, lambda r: f"{r['map_json_bytes'] / 1e6:.2f}MB"),
    ("zstd", 7, lambda r: f"{r['map_zstd_bytes'] / 1e6:.2f}MB"),
)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="skip the 5,000-node size")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", help="write results here")
    parser.add_argument("--plot", help="write a PNG plot here (needs matplotlib)")
    args = parser.parse_args()
    results = []
    print(" ".join(f"{h:>{w}}" for h, w, _ in COLUMNS))
    for nodes, rules in QUICK if args.quick else SIZES:
        r = measure(nodes, rules, args.repeat)
        results.append(r)
        print(" ".join(f"{fmt(r):>{w}}" for _, w, fmt in COLUMNS), flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        xs = [r["nodes"] for r in results]
        ax.plot(xs, [r["index_s"] for r in results], "o-", label="compile (index, lazy views)")
        ax.plot(xs, [r["all_views_s"] for r in results], "^-", label="every node's view")
        ax.plot(xs, [r["join_s"] for r in results], "v-", label="a node joins")
        ax.plot(xs, [r["map_s"] for r in results], "s-", label="one node's full map")
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
