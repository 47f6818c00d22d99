"""What a control request is and what its handler answers: the values that
cross from the control connection (control_conn.py) to the server's
handlers (server/control.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from server.protocol.keys import MachinePublic

__all__ = ["ControlRequest", "ControlResponse", "Handler"]


@dataclass(frozen=True, slots=True)
class ControlRequest:
    machine_key: MachinePublic
    noise_version: int
    method: str
    path: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    # Queues a chunk of this request's streaming response at once, without
    # the stream's task, when that needs no waiting; False: it did not
    # (see `ControlConnection._send_now`, control_conn.py).
    send_now: Callable[[bytes], bool] | None = field(default=None, compare=False)

    def header_values(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k == name]


@dataclass(frozen=True, slots=True)
class ControlResponse:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    # A streaming body (map long poll); each chunk is written and flushed.
    stream: AsyncIterator[bytes] | None = field(default=None, compare=False)


Handler = Callable[[ControlRequest], Awaitable[ControlResponse]]
