"""The store calls of one pre-auth-key registration, in-process, N times: the
login lookups, the key check, `create_node`, the first map's disco key, a lite
endpoints update and the last seen when the stream closes. Prints the CPU per
registration (`time.process_time()`), so a change to the store's statements can
be measured without sockets. python -m bench.bench_register_store [N]"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from server.protocol.keys import DiscoPublic, MachinePrivate, NodePrivate
from server.store.model import Registration
from server.store.sqlite import open_sqlite


def main(n: int) -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    with tempfile.TemporaryDirectory() as tmp:
        store = open_sqlite(Path(tmp) / "db.sqlite")
        keys = [
            store.create_preauth_key(
                "alice",
                reusable=False,
                ephemeral=False,
                tags=(),
                expiration=None,
                now=now,
                rng=os.urandom,
            )[0]
            for _ in range(n)
        ]
        devices = [
            (MachinePrivate.generate().public(), NodePrivate.generate().public()) for _ in range(n)
        ]
        start = time.process_time()
        for i, (machine_key, node_key) in enumerate(devices):
            store.nodes_by_keys((node_key,), machine_key)
            key = store.check_preauth_key(keys[i], now)
            node = store.create_node(
                Registration(
                    machine_key=machine_key,
                    node_key=node_key,
                    hostname=f"host{i}",
                    user="alice",
                    tags=(),
                    auth_key_id=key.id,
                    ephemeral=False,
                    now=now,
                    key_expiry=None,
                    capver=100,
                    approved=True,
                )
            )
            store.update_from_map(node.id, now=now, disco_key=DiscoPublic(os.urandom(32)))
            store.update_from_map(node.id, now=now, endpoints=["192.0.2.1:41641"])
            store.touch_last_seen(node.id, now)
        cpu = time.process_time() - start
    print(f"{cpu / n * 1e3:.3f} ms CPU per registration's store calls (N={n})")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000)
