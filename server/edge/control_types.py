"""What a control request is and what its handler answers: the values that
cross from the control connection (control_conn.py) to the server's
handlers (server/control.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from server.protocol.keys import MachinePublic

__all__ = ["AnswerNow", "ControlRequest", "ControlResponse", "Handler"]


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

    @classmethod
    def of(
        cls,
        headers: list[tuple[str, str]],
        body: bytes,
        machine_key: MachinePublic,
        noise_version: int,
        send_now: Callable[[bytes], bool],
    ) -> ControlRequest:
        """The request of an HTTP/2 stream's header list (pseudo-headers first) and body."""
        pseudo = dict((k, v) for k, v in headers if k.startswith(":"))
        return cls(
            machine_key=machine_key,
            noise_version=noise_version,
            method=pseudo.get(":method", ""),
            path=pseudo.get(":path", ""),
            headers=tuple((k, v) for k, v in headers if not k.startswith(":")),
            body=body,
            send_now=send_now,
        )

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
# A request's response when it is made at once, with no waiting (the
# connection then sends it without a task); None: the `Handler` answers it.
AnswerNow = Callable[[ControlRequest], ControlResponse | None]
