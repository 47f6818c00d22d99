"""A/B in one process: a groups commit's CPU with the session's commit
shortcuts (`_top_filter`, the whole filter message) and without them,
alternated commit by commit, so the other helpers' load falls on both alike.

    python -m bench.msgtemplate_ab [--nodes 5000] [--pairs 8]
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
from datetime import timedelta
from typing import Any

import bench.commit_cost as cc
from server.tailnet import session as session_module


def _general(on: bool) -> None:
    """The session's general path only (`on`), or as shipped."""
    session_module.sends_own_filter_only = (  # type: ignore[assignment]
        (lambda _msg: False) if on else _ONLY
    )
    session_module._same_but_filter = (  # type: ignore[assignment]
        (lambda _src, _held: False) if on else _SAME
    )


_ONLY = session_module.sends_own_filter_only
_SAME = session_module._same_but_filter


def run(nodes: int, pairs: int) -> dict[str, Any]:
    streams: dict[str, Any] = {}
    drain = cc._Streams.drain

    def keeping(self: Any) -> tuple[int, int]:
        streams["s"] = self
        return drain(self)

    cc._Streams.drain = keeping  # type: ignore[method-assign]
    cc.run("groups", nodes, 1, None)  # sets up and makes one commit
    cc._Streams.drain = drain  # type: ignore[method-assign]
    s = streams["s"]
    users = {u: (f"{u}@example.com", u.upper()) for u in (f"u{g}" for g in range(nodes))}
    users = {k: v for k, v in users.items() if int(k[1:]) < -(-nodes // cc.GROUP)}
    cpu: dict[str, list[float]] = {"general": [], "shortcuts": []}
    for n in range(2 * pairs):
        mode = ("general", "shortcuts")[n % 2 ^ (n // 2) % 2]  # ABBA
        _general(mode == "general")
        s.now += timedelta(seconds=1)
        gc.collect()
        gc.disable()  # as the server's fan-out holds the collector (GcPolicy)
        t = time.process_time()
        s.tailnet.swap_source(cc._source("groups", users, cc.MARKER_PORT + 100 + n))
        woke, _ = s.drain()
        cpu[mode].append((time.process_time() - t) * 1e3)
        gc.enable()
        assert woke == nodes
    _general(False)
    return {
        "nodes": nodes,
        **{f"{k}_ms": [round(v, 1) for v in vs] for k, vs in cpu.items()},
        **{f"{k}_median_ms": round(statistics.median(vs), 1) for k, vs in cpu.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=5000)
    parser.add_argument("--pairs", type=int, default=8)
    args = parser.parse_args()
    print(json.dumps(run(args.nodes, args.pairs)))


if __name__ == "__main__":
    main()
