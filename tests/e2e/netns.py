"""Network namespaces for end-to-end tests that need a real separate network:
an exit node whose side of the world the client cannot reach except through it.

A namespace made here has its loopback interface (plus addresses the test puts
on it) and a veth pair with both ends inside holding the default route, where
whatever is sent is dropped: nothing a process inside sends can leave it.
The tailnetd server stays on the host's 127.0.0.1: `bridge` listens on the same
port on the namespace's own 127.0.0.1 and carries each connection to the host's,
so daemons inside use the server URL unchanged.
Needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN), as `ip netns` does.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import subprocess
import threading
from collections.abc import Callable
from typing import TypeVar

__all__ = ["Namespace", "available"]

_CLONE_NEWNET = 0x40000000
_T = TypeVar("_T")


def available() -> bool:
    """Whether this process may create network namespaces."""
    if os.geteuid() != 0:
        return False
    probe = f"tnd-probe-{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True).returncode == 0
    if made:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return made


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


class Namespace:
    def __init__(self, name: str) -> None:
        self.name = name
        _ip("netns", "add", name)
        try:
            self._setup(name)
        except BaseException:
            self.delete()
            raise
        self._listeners: list[socket.socket] = []

    def _setup(self, name: str) -> None:
        _ip("-n", name, "link", "set", "lo", "up")
        # A default route into a veth pair whose both ends stay inside, where
        # what is sent is dropped: tailscaled sees a network that is up, and
        # nothing leaves the namespace.
        _ip("-n", name, "link", "add", "tnd0", "type", "veth", "peer", "name", "tnd1")
        _ip("-n", name, "addr", "add", "198.51.100.2/24", "dev", "tnd0")
        for dev in ("tnd0", "tnd1"):
            _ip("-n", name, "link", "set", dev, "up")
        _ip("-n", name, "route", "add", "default", "dev", "tnd0")

    def add_address(self, cidr: str) -> None:
        """An address only this namespace has (on its loopback interface)."""
        _ip("-n", self.name, "addr", "add", cidr, "dev", "lo")

    def prefix(self) -> list[str]:
        """Put before a command to run it inside the namespace."""
        return ["ip", "netns", "exec", self.name]

    def inside(self, fn: Callable[[], _T]) -> _T:
        """`fn()` called on a thread that entered the namespace: sockets it
        creates live there. The thread ends with it."""
        result: list[_T] = []
        errors: list[BaseException] = []

        def run() -> None:
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                fd = os.open(f"/run/netns/{self.name}", os.O_RDONLY)
                try:
                    if libc.setns(fd, _CLONE_NEWNET) != 0:
                        raise OSError(ctypes.get_errno(), "setns failed")
                finally:
                    os.close(fd)
                result.append(fn())
            except BaseException as exc:  # noqa: BLE001 - re-raised on the caller
                errors.append(exc)

        thread = threading.Thread(target=run)
        thread.start()
        thread.join()
        if errors:
            raise errors[0]
        return result[0]

    def bridge(self, port: int) -> None:
        """Connections to 127.0.0.1:`port` inside reach 127.0.0.1:`port` on the host."""

        def listen() -> socket.socket:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))
            s.listen(64)
            return s

        listener = self.inside(listen)
        self._listeners.append(listener)
        threading.Thread(target=_accept, args=(listener, port), daemon=True).start()

    def delete(self) -> None:
        for s in getattr(self, "_listeners", ()):
            s.close()
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=10)


def _accept(listener: socket.socket, port: int) -> None:
    while True:
        try:
            inner, _ = listener.accept()
        except OSError:
            return  # closed
        try:
            outer = socket.create_connection(("127.0.0.1", port), timeout=5)
        except OSError:
            inner.close()
            continue
        outer.settimeout(None)
        done = threading.Barrier(2, action=lambda i=inner, o=outer: (i.close(), o.close()))
        for a, b in ((inner, outer), (outer, inner)):
            threading.Thread(target=_pump, args=(a, b, done), daemon=True).start()


def _pump(src: socket.socket, dst: socket.socket, done: threading.Barrier) -> None:
    """Copy one direction; the pair is closed once both directions ended."""
    with contextlib.suppress(OSError):
        while data := src.recv(65536):
            dst.sendall(data)
    with contextlib.suppress(OSError):
        dst.shutdown(socket.SHUT_WR)
    done.wait()
