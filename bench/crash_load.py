"""Nothing lost under load: kill -9 the server again and again while clients register.

    python -m bench.crash_load [--kills 100] [--clients 6] [--database postgresql://…]
                               [--replicas 2]

Each round starts the server (with `--replicas 2` and a PostgreSQL URL: two
replicas on one database, and only one of them is killed), lets a handful of
simulated clients register with single-use pre-auth keys through the real
control protocol (Noise, HTTP/2), and kill -9s the server at a random moment.
A client whose registration failed tries again, with the same machine and the
same key, in the next round (as tailscaled does). Afterwards the store must
hold every registration a client was told succeeded, each machine once, each
address once, and every pre-auth key used exactly by the one node that used
it. The run prints the counts and exits non-zero when anything was lost or
duplicated.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from server.store import open_store
from tests.e2e.harness import ServerProcess, TailnetRepo
from tests.unit.control_client import ControlClient, Device

USERS = "users:\n  - {name: alice, email: alice@example.com, display_name: Alice}\n"
POLICY = '{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}\n'


@dataclass
class Pending:
    device: Device
    key: str
    acknowledged: bool = False
    attempts: int = 0


async def _register(port: int, p: Pending) -> None:
    p.attempts += 1
    try:
        client = await asyncio.wait_for(ControlClient.connect(port, p.device.machine), 5)
    except (OSError, ConnectionError, TimeoutError, asyncio.IncompleteReadError):
        return
    try:
        status, reply = await asyncio.wait_for(client.register(p.device.register_body(p.key)), 5)
        if status == 200 and isinstance(reply, dict) and reply.get("MachineAuthorized"):
            p.acknowledged = True
    except Exception:  # the server died mid-request: try again next round
        pass
    finally:
        try:
            await asyncio.wait_for(client.close(), 1)
        except Exception:
            pass


def _create_keys(location: str | Path, count: int) -> list[str]:
    store = open_store(location)
    try:
        now = datetime.now(UTC)
        return [
            store.create_preauth_key(
                "alice", reusable=False, ephemeral=False, tags=(), expiration=None, now=now,
                rng=os.urandom,
            )[0]
            for _ in range(count)
        ]  # fmt: skip
    finally:
        store.close()


def check(location: str | Path, pending: list[Pending]) -> dict[str, int]:
    """What the store holds against what clients were told."""
    store = open_store(location)
    try:
        nodes = store.list_nodes()
        keys = store.list_preauth_keys()
    finally:
        store.close()
    by_machine = Counter(n.machine_key for n in nodes)
    addresses = Counter(a for n in nodes for a in (n.ipv4, n.ipv6) if a is not None)
    uses = Counter(n.auth_key_id for n in nodes if n.auth_key_id is not None)
    known = {n.machine_key for n in nodes}
    lost = sum(1 for p in pending if p.acknowledged and p.device.machine.public() not in known)
    used_keys = {k.id for k in keys if k.used}
    return {
        "clients": len(pending),
        "acknowledged": sum(p.acknowledged for p in pending),
        "nodes": len(nodes),
        "lost_identities": lost,
        "duplicate_identities": sum(c - 1 for c in by_machine.values()),
        "duplicate_addresses": sum(c - 1 for c in addresses.values()),
        "keys_used": len(used_keys),
        "duplicate_key_uses": sum(c - 1 for c in uses.values()),
        "key_uses_lost": len(set(uses) - used_keys),  # a node whose key is not marked used
        "keys_used_without_node": len(used_keys - set(uses)),
    }


def _servers(root: Path, repo: TailnetRepo, database: str | None, replicas: int) -> list[Any]:
    extra = ["--database", database] if database else []
    return [
        ServerProcess(repo.path, root / f"data{i}", root / f"server{i}.log", extra=extra)
        for i in range(max(replicas, 1))
    ]


async def run(kills: int, clients: int, database: str | None, replicas: int, seed: int) -> int:
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="tnd-crash-") as tmp:
        root = Path(tmp)
        repo = TailnetRepo(root / "repo", {"users.yaml": USERS, "policy.hujson": POLICY})
        servers = _servers(root, repo, database, replicas)
        location: str | Path = database or servers[0].data / "tailnetd.sqlite"
        servers[0].data.mkdir(mode=0o700)
        keys = _create_keys(location, kills * clients)
        pending: list[Pending] = []
        for server in servers:
            server.start()
        try:
            for round_no in range(kills):
                victim = servers[round_no % len(servers)]
                retry = [p for p in pending if not p.acknowledged]
                fresh = [
                    Pending(Device(f"n{len(pending) + i}"), keys.pop())
                    for i in range(clients - min(len(retry), clients))
                ]
                pending += fresh
                batch = retry[:clients] + fresh
                tasks = [
                    asyncio.create_task(_register(servers[i % len(servers)].port, p))
                    for i, p in enumerate(batch)
                ]
                await asyncio.sleep(rng.uniform(0.0, 0.4))
                assert victim.proc is not None
                victim.proc.send_signal(signal.SIGKILL)
                victim.proc.wait()
                await asyncio.gather(*tasks)
                victim.proc = None
                victim.start()
            # Let every client that never heard back finish against a live server.
            for p in pending:
                if not p.acknowledged:
                    await _register(servers[0].port, p)
        finally:
            for server in servers:
                server.stop()
        counts = check(location, pending)
    width = max(map(len, counts))
    print(f"{kills} kill -9s, {replicas or 1} server(s), {clients} clients a round")
    for name, value in counts.items():
        print(f"  {name:<{width}}  {value}")
    bad = [k for k in counts if k.startswith(("lost", "duplicate", "key_uses_lost", "keys_used_w"))]
    problems = sum(counts[k] for k in bad)
    unfinished = counts["clients"] - counts["acknowledged"]
    print("nothing lost or duplicated" if problems == 0 else f"{problems} problems")
    if unfinished:
        print(f"  {unfinished} clients never got an answer")
    return 1 if problems or unfinished else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=100)
    parser.add_argument("--clients", type=int, default=6, help="registrations per round")
    parser.add_argument("--database", help="a postgresql:// URL (default: sqlite)")
    parser.add_argument("--replicas", type=int, default=1, help="servers on --database")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    if args.replicas > 1 and not args.database:
        parser.error("--replicas needs --database postgresql://…")
    return asyncio.run(run(args.kills, args.clients, args.database, args.replicas, args.seed))


if __name__ == "__main__":
    sys.exit(main())
