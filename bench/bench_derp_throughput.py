"""DERP relay throughput: tailnetd's embedded DERP against Tailscale's `derper`.

    python -m bench.bench_derp_throughput [--seconds 5] [--json docs/bench/derp_throughput.json]
        [--plot docs/bench/derp_throughput.png]

Two DERP clients, each its own process with a blocking socket (so neither is
the bottleneck of the other, and each server sees the very same clients): A
sends B 1,400-byte packets as fast as the relay takes them (64 frames per
`sendall`), B counts the RecvPacket frames it reads inside a measured window
after a warm-up. The relays, same run, loopback only:

- tailnetd: a real `tailnetd serve` subprocess (bench/loadgen's local server);
  A and B are first registered as nodes through the control protocol, since
  its DERP relays only for nodes of the tailnet.
- derper: Tailscale's own `tailscale.com/cmd/derper` at the client's version
  (1.96.4), built with `go install` from the Go module proxy and cached under
  `~/.cache/tailnetd/derper-<version>/`; plain HTTP on 127.0.0.1, no STUN, no
  client verification. Once as it runs by default (all cores) and once with
  GOMAXPROCS=1, the one-core comparison.

The clients are Python speaking the project's DERP codec (server/protocol/derp):
the same bytes tailscaled sends (upgrade, ClientInfo box, SendPacket frames),
and cheaper per packet than the Go client would need to be here, since the
sender writes pre-built frames and the receiver only walks frame headers.
Reported per relay: packets/s delivered to B, packets/s A got accepted, the
relay's CPU (from /proc) in cores, and packets per CPU-second.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import select
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.loadgen.fleet import Fleet
from bench.loadgen.local import LocalServer, local_server
from bench.loadgen.stats import machine as machine_line
from bench.loadgen.stats import table
from server.protocol import derp
from server.protocol.keys import NodePrivate, NodePublic
from tests.e2e.harness import free_port
from tests.gitops_pusher_bin import cache_dir, go_install

VERSION = "1.96.4"
PACKET = bytes(1400)
BATCH = 32  # frames per sendall
WINDOW = 1024  # packets sent and not yet read by the receiver
STALL = 0.05  # seconds without progress before the window is written off as dropped
WARMUP = 1.0
UPGRADE = b"GET /derp HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: DERP\r\n\r\n"
USERS = "users:\n  - {name: alice, email: alice@example.com, display_name: Alice}\n"
MESH = '{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}\n'
TARGET_PPS, TARGET_RATIO = 150_000, 0.7
_TICKS = os.sysconf("SC_CLK_TCK")
_HEADER = struct.Struct(">BI")


def derper_binary() -> Path:
    target = cache_dir("TAILNETD_DERPER_BIN", f"derper-{VERSION}")
    return go_install(f"tailscale.com/cmd/derper@v{VERSION}", target)


# The clients: one process each, blocking sockets


def _connect(port: int, key: NodePrivate) -> tuple[socket.socket, bytearray]:
    """Upgrade, read ServerKey, send ClientInfo; the socket and what followed."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(UPGRADE)
    buf = bytearray()
    while b"\r\n\r\n" not in buf:
        buf += sock.recv(4096)
    head, _, rest = bytes(buf).partition(b"\r\n\r\n")
    if b" 101 " not in head.split(b"\r\n", 1)[0]:
        raise ConnectionError(f"DERP upgrade refused: {head[:80]!r}")
    buf = bytearray(rest)
    want = derp.HEADER_LEN + len(derp.MAGIC) + 32
    while len(buf) < want:
        buf += sock.recv(4096)
    server_key = derp.parse_server_key(bytes(buf[derp.HEADER_LEN : want]))
    info = derp.ClientInfo(version=derp.PROTOCOL_VERSION, can_ack_pings=True)
    sock.sendall(
        derp.client_info_frame(key, server_key, info, os.urandom(derp.NONCE_LEN))
        + derp.note_preferred_frame(True)
    )
    return sock, buf[want:]


def _frames(buf: bytearray, pos: int) -> tuple[int, int, bool]:
    """Walk whole frames from `pos`: (new pos, RecvPackets seen, ServerInfo seen)."""
    packets, info, end = 0, False, len(buf)
    while end - pos >= derp.HEADER_LEN:
        kind, length = _HEADER.unpack_from(buf, pos)
        if end - pos < derp.HEADER_LEN + length:
            break
        pos += derp.HEADER_LEN + length
        if kind == derp.FrameType.RECV_PACKET:
            packets += 1
        elif kind == derp.FrameType.SERVER_INFO:
            info = True
    return pos, packets, info


def _await_admission(sock: socket.socket, buf: bytearray) -> bytearray:
    while True:
        pos, _, info = _frames(buf, 0)
        if info:
            return buf[pos:]
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("the relay closed the connection during the handshake")
        buf += data


def run_client(role: str, port: int, key_hex: str, peer_hex: str, ack_fd: int) -> None:
    """A child process: `send` or `recv`; prints ready, reads "start end", prints counts.

    The receiver writes its running total to the ack pipe after every read; the
    sender keeps at most WINDOW packets unacknowledged, as a flow-controlled
    transport would, so the figure is what the relay carries, not what it drops.
    A window that stalls for STALL seconds (packets dropped) is written off.
    """
    key = NodePrivate(bytes.fromhex(key_hex))
    sock, buf = _connect(port, key)
    buf = _await_admission(sock, buf)
    print("ready", flush=True)
    start, end = map(float, sys.stdin.readline().split())
    counted = total = 0
    if role == "send":
        chunk = derp.send_packet_frame(NodePublic(bytes.fromhex(peer_hex)), PACKET) * BATCH
        acked = written_off = 0
        while (now := time.monotonic()) < end:
            while total - acked - written_off > WINDOW - BATCH:
                if not select.select([ack_fd], [], [], STALL)[0]:
                    written_off = total - acked
                elif data := os.read(ack_fd, 4096):
                    acked = int.from_bytes(data[-8:], "little")
                else:
                    written_off, end = total - acked, 0.0  # the receiver is done
            sock.sendall(chunk)
            total += BATCH
            if now >= start:
                counted += BATCH
    else:
        sock.settimeout(0.2)
        pos = 0
        while (now := time.monotonic()) < end:
            try:
                data = sock.recv(1 << 20)
            except TimeoutError:
                continue
            if not data:
                break
            buf += data
            pos, packets, _ = _frames(buf, pos)
            if pos > 1 << 20:
                del buf[:pos]
                pos = 0
            total += packets
            if packets:
                os.write(ack_fd, total.to_bytes(8, "little"))
            if now >= start:
                counted += packets
    print(json.dumps({"packets": counted}), flush=True)
    sock.close()


# The relays


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def _child(
    role: str, port: int, key: NodePrivate, peer: NodePublic, ack_fd: int
) -> subprocess.Popen[str]:
    args = ["--role", role, str(port), key.raw.hex(), peer.raw.hex(), str(ack_fd)]
    return subprocess.Popen(
        [sys.executable, "-m", "bench.bench_derp_throughput", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        pass_fds=(ack_fd,),
    )


def measure(
    relay: str, port: int, pid: int, a: NodePrivate, b: NodePrivate, seconds: float
) -> dict[str, Any]:
    ack_r, ack_w = os.pipe()
    receiver = _child("recv", port, b, a.public(), ack_w)
    sender = _child("send", port, a, b.public(), ack_r)
    os.close(ack_r)
    os.close(ack_w)
    children = (receiver, sender)
    try:
        for child in children:
            assert child.stdin is not None and child.stdout is not None
            if child.stdout.readline().strip() != "ready":
                raise RuntimeError(f"{relay}: a DERP client did not get through the handshake")
        start = time.monotonic() + WARMUP
        end = start + seconds
        for child in children:
            assert child.stdin is not None
            child.stdin.write(f"{start} {end}\n")
            child.stdin.flush()
        time.sleep(max(0.0, start - time.monotonic()))
        cpu0 = cpu_seconds(pid)
        time.sleep(max(0.0, end - time.monotonic()))
        cpu = cpu_seconds(pid) - cpu0
        got = [
            json.loads(child.communicate(timeout=30)[0].strip().splitlines()[-1])
            for child in children
        ]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
    delivered, accepted = got[0]["packets"] / seconds, got[1]["packets"] / seconds
    return {
        "relay": relay,
        "seconds": seconds,
        "delivered_pps": round(delivered),
        "accepted_pps": round(accepted),
        "relay_cpu_cores": round(cpu / seconds, 2),
        "packets_per_cpu_s": round(delivered * seconds / cpu) if cpu else None,
    }


@contextmanager
def derper(procs: int | None) -> Iterator[tuple[int, int]]:
    """A derper on 127.0.0.1; (port, pid)."""
    port = free_port()
    env = dict(os.environ)
    if procs:
        env["GOMAXPROCS"] = str(procs)
    with tempfile.TemporaryDirectory(prefix="tnd-derper-") as tmp:
        args = [str(derper_binary()), "-a", f"127.0.0.1:{port}", "-stun=false"]
        args += ["-c", f"{tmp}/derper.key", "-mesh-psk-file", "", "-http-port", "-1"]
        with open(f"{tmp}/derper.log", "w") as log:
            proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(Path(f"{tmp}/derper.log").read_text()) from None
                    time.sleep(0.05)
            yield port, proc.pid
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def _register_two(server: LocalServer) -> tuple[NodePrivate, NodePrivate]:
    async def go() -> tuple[NodePrivate, NodePrivate]:
        fleet = Fleet(server.address, server.key("alice"))
        try:
            await fleet.add(2)
            return fleet.nodes[0].device.node, fleet.nodes[1].device.node
        finally:
            await fleet.close()

    return asyncio.run(go())


def run(seconds: float) -> list[dict[str, Any]]:
    results = []
    with local_server({"users.yaml": USERS, "policy.hujson": MESH}) as server:
        a, b = _register_two(server)
        results.append(measure("tailnetd", server.process.port, server.pid, a, b, seconds))
    for procs, name in ((None, "derper"), (1, "derper GOMAXPROCS=1")):
        with derper(procs) as (port, pid):
            results.append(measure(name, port, pid, a, b, seconds))
    for r in results:
        print(json.dumps(r), flush=True)
    return results


def _ratio(ours: float | None, theirs: float | None) -> str:
    return f"{ours / theirs:.2f}x" if ours and theirs else "-"


def _verdict(value: float, target: float) -> str:
    return "met" if value >= target else f"{target / max(1.0, value):.1f}x short"


def render(results: list[dict[str, Any]]) -> str:
    """The table; tailnetd against each relay, by packets delivered and by
    packets per CPU-second (the clients share the machine, so a relay may be
    idle part of the run: per CPU-second is what "on one core" measures)."""
    ours = next(r for r in results if r["relay"] == "tailnetd")
    rows = []
    for r in results:
        rows.append(
            [
                r["relay"],
                f"{r['delivered_pps']:,}",
                f"{r['accepted_pps']:,}",
                r["relay_cpu_cores"],
                f"{r['packets_per_cpu_s']:,}" if r["packets_per_cpu_s"] else "-",
                "" if r is ours else _ratio(ours["delivered_pps"], r["delivered_pps"]),
                "" if r is ours else _ratio(ours["packets_per_cpu_s"], r["packets_per_cpu_s"]),
            ]
        )
    header = [
        "relay",
        "delivered pkt/s",
        "accepted pkt/s",
        "relay CPU (cores)",
        "pkt per CPU-s",
        "tailnetd / this (pkt/s)",
        "tailnetd / this (per CPU-s)",
    ]
    per_cpu = ours["packets_per_cpu_s"] or 0
    return (
        table(rows, header)
        + f"\n\ntarget >= {TARGET_PPS:,} pkt/s on one core: per CPU-second "
        + _verdict(per_cpu, TARGET_PPS)
        + f"; delivered in this run {_verdict(ours['delivered_pps'], TARGET_PPS)}"
        + f"\ntarget >= {TARGET_RATIO}x derper: see the ratio columns"
    )


def plot(results: list[dict[str, Any]], path: Path, machine: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    names = [r["relay"] for r in results]
    left.barh(names, [r["delivered_pps"] for r in results], color="tab:blue")
    left.axvline(TARGET_PPS, color="grey", linestyle="--", label=f"target {TARGET_PPS:,}/s")
    left.set(xlabel="1,400-byte packets/s delivered", title="Relay throughput")
    left.legend(fontsize=8)
    right.barh(names, [r["packets_per_cpu_s"] or 0 for r in results], color="tab:green")
    right.set(xlabel="packets per relay CPU-second", title="Relay efficiency")
    for ax in (left, right):
        ax.invert_yaxis()
    fig.suptitle(f"DERP relay, two clients over loopback ({machine})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--plot", type=Path)
    parser.add_argument("--replot", type=Path, help="no runs: table and plot from this JSON")
    parser.add_argument("--role", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role:
        role, port, key, peer, ack_fd = args.role
        run_client(role, int(port), key, peer, int(ack_fd))
        return
    machine = machine_line()
    if args.replot:
        data = json.loads(args.replot.read_text())
        machine, results = data["machine"], data["runs"]
    else:
        results = run(args.seconds)
        if args.json:
            args.json.write_text(json.dumps({"machine": machine, "runs": results}, indent=2) + "\n")
    print(f"\nmachine: {machine}\n")
    print(render(results))
    if args.plot:
        plot(results, args.plot, machine)


if __name__ == "__main__":
    main()
