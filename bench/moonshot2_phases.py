"""CPU of a moonshot policy commit's gitctl side, per phase: the compile,
`compare` + `adopt` against the earlier index, and every node's view (a
ports-only commit under autogroup:self: each view refiltered).

    python -m bench.moonshot2_phases --nodes 50000 --per-user 200 --commits 4

CPU is `time.process_time` (the machine is shared); no sessions, no encoding.
"""

from __future__ import annotations

import argparse
import gc
import time

from gitctl.policy import parse_policy
from gitctl.policy.topology import Topology, TopologyNode, TopologyUser
from gitctl.policy.viewindex import ViewIndex


def topology(nodes: int, per: int) -> Topology:
    n_users = max(2, nodes // per)
    users = tuple(TopologyUser(u + 1, f"u{u}", f"u{u}@example.com") for u in range(n_users))
    return Topology(
        users=users,
        nodes=tuple(
            TopologyNode(
                name=f"n{i}",
                hostname=f"n{i}",
                user=f"u{i % n_users}",
                tags=(),
                ipv4=f"100.{64 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}",
                ipv6=f"fd7a:115c:a1e0::{i:x}",
            )
            for i in range(nodes)
        ),
    )


def policy(ports: str) -> object:
    acl = {"action": "accept", "src": ["autogroup:member"], "dst": [f"autogroup:self:{ports}"]}
    return parse_policy({"acls": [acl]})


# --no-like: built as before the index over the same nodes was copied (main)
LIKE = [lambda previous: previous]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=50000)
    parser.add_argument("--per-user", type=int, default=200)
    parser.add_argument("--commits", type=int, default=4)
    parser.add_argument("--no-like", action="store_true")
    args = parser.parse_args()
    if args.no_like:
        LIKE[0] = lambda previous: None
    topo = topology(args.nodes, args.per_user)
    keys = list(range(args.nodes))
    previous = ViewIndex(policy("*"), topo, keys)  # type: ignore[arg-type]
    for i in keys:
        previous.view(i)
    gc.collect()
    gc.freeze()
    for n in range(args.commits):
        c0 = time.process_time()
        ports = "22,443" if n % 2 == 0 else "*"
        # (like=: what compile_tailnet passes, its base the serving index)
        current = ViewIndex(policy(ports), topo, keys, like=LIKE[0](previous))  # type: ignore[arg-type]
        c1 = time.process_time()
        current.compare(previous)
        current.adopt(previous)
        c2 = time.process_time()
        for i in keys:
            current.view(i)
        c3 = time.process_time()
        print(
            f"commit {n}: compile {1000 * (c1 - c0):7.1f} ms  compare+adopt "
            f"{1000 * (c2 - c1):7.1f} ms  views {1000 * (c3 - c2):7.1f} ms "
            f"({1e6 * (c3 - c2) / args.nodes:.2f} us each)  CPU"
        )
        previous = current


if __name__ == "__main__":
    main()
