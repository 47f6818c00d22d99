"""The frames one turn's deliveries built, sent once all of them are built.

A commit wakes every session; `Deliveries` (handle.py) runs a batch of idle
streams' deliveries in one loop callback. Each stepped its session, framed
the message and wrote it to its connection (h2 frame, Noise seal, socket
`send`) before the next session was stepped. Through sockets that
alternation was the cost a commit's fan-out added over stepping the same
sessions in process (bench_socket `--spy-commit`: the loopback `send` a
quarter of the fan-out's samples, and the first reads of each session's
and each connection's objects the rest of the gap): every `send` runs the
kernel's TCP path in between two sessions' steps, and each step then starts
from cold caches. So a delivery stages its frame here, and the callback
sends the batch after its last step: the steps run back to back, then the
writes.

A frame that cannot go now (a full flow-control window, a backed-up socket,
a stream that ended meanwhile) is left to its stream's task, as a delivery
that could not send always was: `held` for the task to send first, and the
task woken.
"""

from __future__ import annotations

from collections.abc import Callable

from server.tailnet.handle import SessionHandle

__all__ = ["StagedSends"]

# (send it now, the frame, whose it is, where its task finds a frame to send first)
_Staged = tuple[Callable[[bytes], bool], bytes, SessionHandle, list[bytes]]


class StagedSends:
    """Frames staged by deliveries, in order; `flush` sends them."""

    def __init__(self, sent: Callable[[SessionHandle], None]) -> None:
        self._sent = sent  # a handle's frame went out (metrics: caught up)
        self._frames: list[_Staged] = []

    def add(
        self,
        send_now: Callable[[bytes], bool],
        frame: bytes,
        handle: SessionHandle,
        held: list[bytes],
    ) -> None:
        self._frames.append((send_now, frame, handle, held))

    def __len__(self) -> int:
        return len(self._frames)

    def flush(self) -> int:
        """Send every staged frame; how many could not go (each is held for
        its task, which is woken)."""
        frames, self._frames = self._frames, []
        unsent = 0
        sent = self._sent
        for send_now, frame, handle, held in frames:
            try:
                if send_now(frame):
                    sent(handle)
                    continue
            except Exception:  # noqa: BLE001 - its task meets the error again, in its own stream
                pass
            held.append(frame)
            handle.wake.set()
            unsent += 1
        return unsent
