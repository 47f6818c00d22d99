"""Two replicas on one PostgreSQL behind HAProxy, joined by real 1.96.4 clients.

The clients' server URL is HAProxy's (TCP mode, `balance roundrobin`), so
their control connections and their DERP connections land on either
replica; the replicas share node state through LISTEN/NOTIFY and relay
packets to each other's clients over the DERP mesh. Every client relays
through DERP (TS_DEBUG_ALWAYS_USE_DERP) so a ping between clients on
different replicas crosses the mesh whenever their DERP connections do.

One PostgreSQL, two servers, HAProxy and four daemons for the whole module
(CI has two cores); tests run in file order and each leaves the tailnet as
the next expects.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.harness import (
    ALICE_AND_BOB,
    ServerProcess,
    TailnetRepo,
    TailscaleNode,
    free_port,
    in_parallel,
    wait_for,
)
from tests.pgserver import PgServer, PgUnavailable

POLICY = '{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}\n'
NAMES = ("r1", "r2", "r3", "r4")
# How long a node change made through one replica may take to reach a client
# of the other: LISTEN/NOTIFY, the map delta, the client applying it.
PROPAGATION = 3.0

HAPROXY_CFG = """\
global
    maxconn 1000
    stats socket {admin} mode 600 level admin
defaults
    mode tcp
    timeout connect 2s
    timeout client 1h
    timeout server 1h
    # A replica refusing connections: try the other (a health check may not
    # have noticed the death yet).
    retries 3
    option redispatch
frontend tailnet
    bind 127.0.0.1:{port}
    default_backend replicas
backend replicas
    balance roundrobin
{servers}
"""


class Replicas:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.pg = PgServer.start()
        self.repo = TailnetRepo(
            tmp / "repo", {"users.yaml": ALICE_AND_BOB, "policy.hujson": POLICY}
        )
        mesh_key = tmp / "mesh.key"
        mesh_key.write_text(os.urandom(32).hex() + "\n")
        self.haproxy_port = free_port()
        self.url = f"http://127.0.0.1:{self.haproxy_port}"
        self.servers = [
            ServerProcess(self.repo.path, tmp / f"data-{r}", tmp / f"tailnetd-{r}.log")
            for r in ("a", "b")
        ]
        for me, other in zip(self.servers, reversed(self.servers), strict=True):
            me.extra = [
                "--database", self.pg.url(),
                "--replica-id", me.data.name.removeprefix("data-"),
                "--server-url", self.url,
                "--mesh-key-file", str(mesh_key),
                "--mesh-with", other.url,
                # One control key: a client's /key fetch and its /ts2021
                # connection may reach different replicas.
                "--control-key-file", str(tmp / "control.key"),
            ]  # fmt: skip
        self.haproxy: subprocess.Popen[bytes] | None = None
        self.nodes = [TailscaleNode(name, tmp / "nodes") for name in NAMES]
        for node in self.nodes:
            node.extra_env["TS_DEBUG_ALWAYS_USE_DERP"] = "1"

    def start(self) -> None:
        for server in self.servers:  # one after the other: the first migrates the schema
            server.start()
        self._start_haproxy()

    def _start_haproxy(self) -> None:
        haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
        servers = "\n".join(
            f"    server {s.data.name} 127.0.0.1:{s.port} check inter 300ms fall 2 rise 1"
            for s in self.servers
        )
        cfg = self.tmp / "haproxy.cfg"
        cfg.write_text(
            HAPROXY_CFG.format(
                port=self.haproxy_port, servers=servers, admin=self.tmp / "haproxy.sock"
            )
        )
        log = open(self.tmp / "haproxy.log", "ab")
        self.haproxy = subprocess.Popen(
            [haproxy, "-f", str(cfg), "-db"], stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        wait_for(lambda: _answers(self.url), 20, "HAProxy to pass /health through")

    def stop(self) -> None:
        in_parallel(node.stop for node in self.nodes)
        if self.haproxy is not None and self.haproxy.poll() is None:
            self.haproxy.terminate()
            self.haproxy.wait(10)
        for server in self.servers:
            server.stop()
        self.pg.stop()

    def live(self) -> list[ServerProcess]:
        return [s for s in self.servers if s.proc is not None and s.proc.poll() is None]

    def node_list(self) -> list[dict[str, Any]]:
        return list(json.loads(self.live()[0].admin("nodes", "list", "--json")))

    def node_id(self, name: str) -> int:
        (entry,) = [n for n in self.node_list() if n["hostname"] == name]
        return int(entry["id"])

    def replica_of(self, node_id: int) -> ServerProcess | None:
        """The replica holding the node's map stream (None: none yet)."""
        holders = [s for s in self.live() if node_id in s.status()["streaming_here"]]
        return holders[0] if len(holders) == 1 else None

    def place(self, node: TailscaleNode, server: ServerProcess) -> None:
        """Restart `node` with the other replica drained in HAProxy (its
        runtime API), so both its control and its DERP connection land on
        `server`; then let HAProxy use both again."""
        (other,) = [s for s in self.servers if s is not server]
        derp_before = sum(self.derp_clients(s) for s in self.live())
        node_id = self.node_id(node.name)
        self._haproxy_command(f"set server replicas/{other.data.name} state maint")
        try:
            node.stop()
            node.start()
            wait_for(
                lambda: (
                    self.replica_of(node_id) is server
                    and sum(self.derp_clients(s) for s in self.live()) == derp_before
                ),
                30,
                f"{node.name} streaming and relaying on {server.data.name}",
            )
        finally:
            self._haproxy_command(f"set server replicas/{other.data.name} state ready")

    def _haproxy_command(self, command: str) -> None:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(self.tmp / "haproxy.sock"))
            sock.sendall(command.encode() + b"\n")
            answer = sock.recv(4096).decode().strip()
        assert not answer, f"haproxy: {command}: {answer}"

    def metric(self, server: ServerProcess, name: str) -> float:
        transport = httpx.HTTPTransport(uds=str(server.data / "tailnetd.sock"))
        with httpx.Client(transport=transport, base_url="http://tailnetd") as admin:
            text = admin.get("/metrics").text
        (value,) = [line.split()[-1] for line in text.splitlines() if line.startswith(name + " ")]
        return float(value)

    def derp_clients(self, server: ServerProcess) -> float:
        return self.metric(server, "tailnetd_derp_clients")

    def diagnose(self) -> str:
        parts = [f"--- {s.log_path.name} ---\n{s.log()[-5000:]}" for s in self.servers]
        parts.append(f"--- haproxy ---\n{(self.tmp / 'haproxy.log').read_text()[-2000:]}")
        parts += [f"--- {n.name} ---\n{n.log()[-2500:]}" for n in self.nodes]
        return "\n".join(parts)


def _answers(url: str) -> bool:
    import urllib.request

    with urllib.request.urlopen(url + "/health", timeout=2) as resp:
        return resp.status == 200


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    if shutil.which("haproxy") is None and not Path("/usr/sbin/haproxy").exists():
        pytest.skip("HAProxy is not installed (make test-tools)")
    try:
        replicas = Replicas(tmp_path_factory.mktemp("replicas"))
    except PgUnavailable as exc:
        pytest.skip(str(exc))
    try:
        replicas.start()
        yield replicas
    finally:
        replicas.stop()


def _up(net: Replicas, node: TailscaleNode, key: str) -> None:
    node.start()
    node.up(net.url, key)


def test_clients_on_both_replicas_see_every_peer(net: Replicas) -> None:
    key = net.servers[0].create_key("alice", "--reusable")
    in_parallel(lambda n=n: _up(net, n, key) for n in net.nodes)  # type: ignore[misc]
    ids = {n.name: net.node_id(n.name) for n in net.nodes}
    holders = wait_for(
        lambda: (
            (h := {name: net.replica_of(i) for name, i in ids.items()}) and all(h.values()) and h
        ),
        15,
        "every client's map stream on one replica",
    )
    placed = {name: s.data.name for name, s in holders.items()}
    if len(set(placed.values())) < 2:
        # Round robin counts every TCP connection (the /key fetch, /ts2021,
        # DERP, netcheck probes), so four clients may all stream from one.
        lonely = next(s for s in net.servers if s.data.name not in placed.values())
        net.place(net.nodes[0], lonely)
        placed[net.nodes[0].name] = lonely.data.name
    assert set(placed.values()) == {"data-a", "data-b"}, (placed, net.diagnose())

    _every_client_sees_every_other(net, f"placed {placed}")


def _every_client_sees_every_other(net: Replicas, when: str) -> None:
    for node in net.nodes:
        wait_for(
            lambda n=node: n.peer_names() == set(NAMES) - {n.name},
            30,
            f"{node.name} to see every other client ({when})",
        )


def _pair_across(net: Replicas) -> tuple[TailscaleNode, TailscaleNode]:
    by_replica: dict[str, TailscaleNode] = {}
    for node in net.nodes:
        holder = net.replica_of(net.node_id(node.name))
        if holder is not None:
            by_replica.setdefault(holder.data.name, node)
    assert len(by_replica) == 2, by_replica
    return by_replica["data-a"], by_replica["data-b"]


def test_pings_between_clients_on_different_replicas_cross_the_derp_mesh(
    net: Replicas,
) -> None:
    on_a, on_b = _pair_across(net)
    for src, dst in ((on_a, on_b), (on_b, on_a)):
        out = src.ping(dst.ip(), count=3)
        assert "pong from" in out, f"{src.name} -> {dst.name}: {out}\n{net.diagnose()}"

    # DERP connections go through HAProxy too, so where a client relays is
    # not where it streams: put two clients' both connections on different
    # replicas, and their packets must cross the mesh.
    first, second = net.nodes[:2]
    net.place(first, net.servers[0])
    net.place(second, net.servers[1])
    before = sum(net.metric(s, "tailnetd_derp_packets_forwarded_total") for s in net.servers)
    for src, dst in ((first, second), (second, first)):
        out = src.ping(dst.ip(), count=2)
        assert "pong from" in out, f"{src.name} -> {dst.name}: {out}\n{net.diagnose()}"
    after = sum(net.metric(s, "tailnetd_derp_packets_forwarded_total") for s in net.servers)
    assert after > before, "no packet crossed the DERP mesh"


def test_rename_through_one_replica_reaches_clients_of_the_other(net: Replicas) -> None:
    on_a, on_b = _pair_across(net)
    server_a = net.servers[0]
    server_a.admin("nodes", "rename", str(net.node_id(on_a.name)), "renamed-a")
    started = time.monotonic()  # the rename is committed (the CLI's start-up not counted)

    def seen() -> bool:
        peers = on_b.status().get("Peer") or {}
        return any(p["DNSName"].startswith("renamed-a.") for p in peers.values())

    wait_for(seen, PROPAGATION, f"{on_b.name} (on replica b) to see the rename", interval=0.05)
    elapsed = time.monotonic() - started
    print(f"rename through replica a -> a client of replica b: {elapsed:.2f}s")
    assert elapsed < PROPAGATION, elapsed


def test_killed_replica_clients_come_back_through_the_other(net: Replicas) -> None:
    before = {n["id"]: n for n in net.node_list()}
    victim, survivor = net.servers
    orphans = [n for n in net.nodes if net.replica_of(net.node_id(n.name)) is victim]
    assert orphans
    assert victim.proc is not None
    victim.proc.send_signal(signal.SIGKILL)
    victim.proc.wait()
    killed = time.monotonic()

    wait_for(
        lambda: set(survivor.status()["streaming_here"]) == set(before),
        60,
        "every client streaming from the surviving replica",
    )
    print(f"kill -9 -> every client streaming from the other: {time.monotonic() - killed:.1f}s")
    after = {n["id"]: n for n in net.node_list()}
    for key in ("hostname", "ipv4", "ipv6", "node_key", "machine_key", "user"):
        assert {i: n[key] for i, n in after.items()} == {i: n[key] for i, n in before.items()}
    _every_client_sees_every_other(net, "after the failover")
    for node in net.nodes:
        assert node.ip() == before[net.node_id(node.name)]["ipv4"]
    survivors = [n for n in net.nodes if n not in orphans]
    for src in orphans:
        dst = survivors[0] if survivors else net.nodes[-1]
        out = src.ping(dst.ip(), count=3)
        assert "pong from" in out, f"{src.name} -> {dst.name}: {out}\n{net.diagnose()}"


def test_a_restarted_replica_serves_again_and_its_deletes_reach_the_others(
    net: Replicas,
) -> None:
    """The killed replica comes back (every client now streams from the other)
    and a node deleted through it disappears from those clients' peers."""
    revived, holder = net.servers
    revived.start()
    gone = net.nodes[-1]
    gone_id = net.node_id(gone.name)
    watchers = [n for n in net.nodes if n is not gone]
    assert all(net.replica_of(net.node_id(n.name)) is holder for n in watchers)
    revived.admin("nodes", "delete", str(gone_id))
    started = time.monotonic()
    for node in watchers:
        wait_for(
            lambda n=node: gone.name not in n.peer_names(),
            PROPAGATION,
            f"{node.name} (on replica b) to lose the deleted {gone.name}",
            interval=0.05,
        )
    elapsed = time.monotonic() - started
    print(f"delete through replica a -> every client of replica b: {elapsed:.2f}s")
    assert elapsed < PROPAGATION, elapsed
