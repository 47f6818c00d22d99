"""What one small `socket.send` on loopback costs the sender, with nothing
else around it: the floor under each delivery of an endpoint wave.

    python -m bench.loopback_send [--conns 100] [--size 250] [--rounds 200]

A child process holds `--conns` TCP connections to this one and reads them
(asleep in epoll between rounds, as idle map streams' clients are). Each
round sends `--size` bytes on every connection, then sleeps 10 ms. Printed:
this process's CPU (`time.process_time`) per send, and its split. On
loopback the receiver's TCP work and its wake-up run in the sender's system
call, so this is most of what the server pays per peer that is not Python.
"""

from __future__ import annotations

import argparse
import os
import selectors
import socket
import time


def _reader(port: int, conns: int) -> None:
    sel = selectors.DefaultSelector()
    for _ in range(conns):
        sel.register(socket.create_connection(("127.0.0.1", port)), selectors.EVENT_READ)
    while True:
        for key, _ in sel.select():
            if not key.fileobj.recv(65536):  # type: ignore[union-attr]
                os._exit(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--conns", type=int, default=100)
    parser.add_argument("--size", type=int, default=250)
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(args.conns)
    child = os.fork()
    if child == 0:
        _reader(server.getsockname()[1], args.conns)
    conns = [server.accept()[0] for _ in range(args.conns)]
    for conn in conns:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    message = b"x" * args.size
    for _ in range(3):
        before, cpu = os.times(), time.process_time()
        for _ in range(args.rounds):
            for conn in conns:
                conn.send(message)
            time.sleep(0.01)
        cpu, after = time.process_time() - cpu, os.times()
        sends = args.rounds * args.conns
        user = (after.user - before.user) / sends * 1e6  # clock ticks: coarse
        system = (after.system - before.system) / sends * 1e6
        print(
            f"{cpu / sends * 1e6:.1f} us per send (user ~{user:.1f}, system ~{system:.1f}), "
            f"load {os.getloadavg()[0]:.1f}"
        )
    for conn in conns:
        conn.close()
    os.waitpid(child, 0)


if __name__ == "__main__":
    main()
