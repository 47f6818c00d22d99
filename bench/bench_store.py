"""Registration cost in the store as the tailnet grows, on sqlite or PostgreSQL.

Run: python -m bench.bench_store [--sizes 1000,5000,10000] [--strategies sequential,random]
     [--database postgresql://user@host/db]

With --database, each run registers into a fresh database created on that
server (the role needs CREATEDB) and dropped afterwards; without it, into a
fresh sqlite file. `python -m tests.pgserver` starts a throwaway server and
prints a URL to use.

For each size and address allocation strategy it registers that many nodes
through `create_node` into a fresh store and prints the mean time of one
registration over the first and the last `--window` registrations (a cost
that grows with the tailnet shows as end > start), the total, and
registrations per second over the whole run. Two name
patterns: every hostname distinct ("node17"), and every hostname the same
("localhost", as containers and cloned images often report), which makes
each new node take the next free "localhost-N". Then, on the full store, it
deletes every tenth node and registers as many again (reusing the freed
addresses and names), the churn ephemeral nodes cause.
Numbers are wall-clock on whatever machine runs it.
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from server.protocol.keys import MachinePublic, NodePublic
from server.store import AllocationStrategy, SqlStore, open_store, redact_url
from server.store.model import Registration

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
STRATEGIES: dict[str, AllocationStrategy] = {"sequential": "sequential", "random": "random"}


def register(store: SqlStore, i: int, hostname: str) -> None:
    key = i.to_bytes(32, "big")
    store.create_node(
        Registration(
            machine_key=MachinePublic(key),
            node_key=NodePublic(key),
            hostname=hostname,
            user="bench@example.com",
            now=NOW,
        )
    )


def per_call_ms(fn: Callable[[int], None], ids: range) -> float:
    t0 = time.perf_counter()
    for i in ids:
        fn(i)
    return (time.perf_counter() - t0) * 1000 / max(1, len(ids))


@contextmanager
def fresh_database(database: str | None) -> Iterator[str | Path]:
    """A new, empty database: a sqlite file, or one created on the given server."""
    if database is None:
        with tempfile.TemporaryDirectory() as tmp:
            yield Path(tmp) / "s.db"
        return
    import psycopg

    name = f"tailnetd_bench_{os.getpid()}"
    with psycopg.connect(database, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}".encode())
    try:
        yield urlunsplit(urlsplit(database)._replace(path=f"/{name}"))
    finally:
        with psycopg.connect(database, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE {name} WITH (FORCE)".encode())


def run(
    size: int, strategy: AllocationStrategy, same_name: bool, window: int, database: str | None
) -> str:
    window = min(window, size // 2)
    with fresh_database(database) as where:
        rng = random.Random(1)
        with open_store(where, allocation=strategy, rng=rng.randbytes) as store:

            def reg(i: int) -> None:
                register(store, i, "localhost" if same_name else f"node{i}")

            t0 = time.perf_counter()
            start = per_call_ms(reg, range(window))
            per_call_ms(reg, range(window, size - window))
            end = per_call_ms(reg, range(size - window, size))
            total = time.perf_counter() - t0

            # Churn: free every tenth node, then fill the holes again.
            victims = [n.id for n in store.list_nodes()[::10]]
            t0 = time.perf_counter()
            for node_id in victims:
                store.delete_node(node_id)
            churn_delete = (time.perf_counter() - t0) * 1000 / len(victims)
            churn_add = per_call_ms(reg, range(size, size + len(victims)))
    names = "same name" if same_name else "distinct"
    return (
        f"{size:>6} {strategy:<10} {names:<9} {start:>8.3f} {end:>8.3f} {total:>8.2f}"
        f" {size / total:>8.0f} {churn_delete:>8.3f} {churn_add:>8.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1000,5000,10000")
    parser.add_argument("--strategies", default="sequential,random")
    parser.add_argument("--window", type=int, default=200)
    parser.add_argument("--names", choices=["distinct", "same", "both"], default="both")
    parser.add_argument("--database", metavar="URL", help="a PostgreSQL server to use")
    args = parser.parse_args()
    print(f"store: {redact_url(args.database) if args.database else 'sqlite (temp file)'}")
    name_modes = {"distinct": [False], "same": [True], "both": [False, True]}[args.names]
    print(
        f"{'nodes':>6} {'strategy':<10} {'names':<9} {'start ms':>8} {'end ms':>8}"
        f" {'total s':>8} {'reg/s':>8} {'del ms':>8} {'re-add':>8}"
    )
    for size in (int(s) for s in args.sizes.split(",")):
        for name in args.strategies.split(","):
            if name not in STRATEGIES:
                raise SystemExit(f"unknown strategy {name!r}")
            for same_name in name_modes:
                line = run(size, STRATEGIES[name], same_name, args.window, args.database)
                print(line, flush=True)


if __name__ == "__main__":
    main()
