"""One open streaming map request as the tailnet sees it: what it must resend
(`SessionHandle`'s marks), and how it is woken.

A woken session normally runs its task: the stream's loop in
server/control.py steps its `MapSession` and yields the frame to its
connection. In a mesh one endpoint change wakes a thousand sessions for the
same shared delta, and resuming a thousand tasks and generators cost more
than building and sending the delta. So a stream that idles (its task waiting
for a wake-up, nothing of its own due) leaves a `deliver` on its handle, and
`Deliveries` runs those for every session woken in one loop turn, in the
next turn, where their tasks would have run: each steps its session and
stages its frame, and `flush` writes the turn's frames once all are built
(staged.py). A delivery that cannot finish without waiting (a ping or
keep-alive due, the session no longer served; at the flush, a full
flow-control window or a backed-up socket) has its task woken as before, so
a blocked stream still waits in its task and holds at most one message.

Most of a volatile wave's sessions need not even be stepped: `bulk` (the
control handler's `VolatileWave`, wave.py) sends the one shared frame to
each viewer it can vouch for, and hands the others back to `deliver`.
"""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from server.tailnet.session import Wake
from server.wakeup import Wakeup

if TYPE_CHECKING:
    from server.tailnet.wave import StreamOutlet

__all__ = ["Deliveries", "SessionHandle"]

_NO_PEERS: frozenset[int] = frozenset()


class Deliveries:
    """The sessions woken this turn whose streams idle with a `deliver`: run
    together on the loop's next turn. `delivered` counts the deliveries that
    needed no task (what tests count)."""

    def __init__(self) -> None:
        self._due: list[SessionHandle] = []
        self.delivered = 0
        # Sends to the handles it can and returns the others (wave.py).
        self.bulk: Callable[[list[SessionHandle]], list[SessionHandle]] | None = None
        # Sends the frames this turn's deliveries staged, once all are built,
        # and says how many could not go (staged.py).
        self.flush: Callable[[], int] | None = None

    def add(self, handle: SessionHandle) -> None:
        # The wave's first: the loop is asked once per wave.
        if not self._due and not self._ask_loop():
            handle.wake.set()
            return
        self._due.append(handle)

    def _ask_loop(self) -> bool:
        """Have the loop run the due deliveries on its next turn; False
        without a running loop (then each task delivers its own)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
        loop.call_soon(self._run)
        return True

    def mark_peer(self, handles: Iterable[SessionHandle], peer_id: int) -> None:
        """`SessionHandle.mark_peer(peer_id)` of each handle, in one loop: a
        mesh's endpoint change marks a thousand viewers, and the three calls
        per viewer that marking one by one takes were a tenth of its wave."""
        due = self._due
        queued = len(due)
        for handle in handles:
            peers = handle.peers
            if peers is None:
                handle.peers = {peer_id}
            else:
                peers.add(peer_id)
            if handle.due or handle.wake.is_set():
                continue  # already on its way
            if handle.deliver is None or handle._deliveries is not self:
                handle.set()  # its task, or the Deliveries it belongs to
                continue
            handle.due = True
            due.append(handle)
        if not queued and due and not self._ask_loop():
            self._due = []
            for handle in due:
                handle.due = False
                handle.wake.set()

    def _run(self) -> None:
        try:
            self._deliver_due()
        finally:
            if self.flush is not None:
                self.delivered -= self.flush()

    def _deliver_due(self) -> None:
        due, self._due = self._due, []
        if self.bulk is not None:
            try:
                rest = self.bulk(due)
            except Exception as exc:  # noqa: BLE001 - the general path still delivers
                # Any handle it sent to has no marks left: `deliver` finds nothing to send.
                asyncio.get_running_loop().call_exception_handler(
                    {"message": "bulk map delivery failed", "exception": exc}
                )
            else:
                self.delivered += len(due) - len(rest)
                due = rest
        for handle in due:
            handle.due = False
            if handle.wake.is_set():
                continue  # woken meanwhile (a ping, a close): its task does it all
            deliver = handle.deliver
            try:
                done = deliver is not None and deliver()
            except Exception as exc:  # noqa: BLE001 - one stream's failure, not the wave's
                # Its task meets the error again, in its own stream (which ends);
                # the other sessions of the wave are delivered all the same.
                asyncio.get_running_loop().call_exception_handler(
                    {"message": "map delivery failed", "exception": exc}
                )
                done = False
            if done:
                self.delivered += 1
            else:
                handle.wake.set()


class SessionHandle:
    """One open streaming map request; the tailnet marks what it must resend
    (see `session.Wake` for what each mark means) and wakes it (`set`)."""

    __slots__ = (
        "node_id",
        "wake",
        "full",
        "top",
        "peers",
        "closed",
        "ping",
        "keepalive",
        "deliver",
        "outlet",
        "due",
        "_deliveries",
    )

    def __init__(self, node_id: int, deliveries: Deliveries | None = None) -> None:
        self.node_id = node_id
        self.wake = Wakeup()
        self.full = True
        self.top = False
        self.peers: set[int] | None = None  # made at the first peer marked
        self.closed = False
        self.ping: str | None = None  # a health probe's URL to send (server/tailnet/probes.py)
        self.keepalive = False  # its keep-alive is due (keepalives.py)
        # Set by the stream while its task idles: sends what the marks ask for
        # without the task; False when it cannot (the task is woken instead).
        self.deliver: Callable[[], bool] | None = None
        self.outlet: StreamOutlet | None = None  # set with `deliver`: what a bulk wave sends by
        self.due = False  # queued in `_deliveries`
        self._deliveries = deliveries

    def set(self) -> None:
        """Wake it for what it was marked with: through `deliver` on the next
        turn when its stream idles with one, else its task (a `Wakeable`)."""
        if self.due or self.wake.is_set():
            return  # already on its way
        if self.deliver is None or self._deliveries is None:
            self.wake.set()
            return
        self.due = True
        self._deliveries.add(self)

    def send_ping(self, url: str) -> None:
        self.ping = url
        self.wake.set()

    def mark_keepalive(self) -> None:
        self.keepalive = True
        self.wake.set()

    def take_keepalive(self) -> bool:
        """Whether a keep-alive is due; a wake for nothing else is used up."""
        due, self.keepalive = self.keepalive, False
        if due and not (self.full or self.top or self.peers or self.ping or self.closed):
            self.wake.clear()
        return due

    def take_ping(self) -> str | None:
        url, self.ping = self.ping, None
        return url

    def mark_full(self, *, wake: bool = True) -> None:
        """Anything of its map may have changed (a commit, its own record).
        ``wake=False``: the caller wakes it (paced, see `PacedWakes`)."""
        self.full = True
        if wake:
            self.set()

    def mark_top(self) -> None:
        """Its own fields may have changed, and its peers only where nodes
        changed (a join or leave that gives or takes peers)."""
        self.top = True
        self.set()

    def mark_peer(self, peer_id: int) -> None:
        """That peer's entry may have changed (endpoints, online)."""
        if self.peers is None:
            self.peers = set()
        self.peers.add(peer_id)
        self.set()

    def take_wake(self) -> Wake:
        # An idle session holds no per-peer container between wake-ups.
        wake = Wake(self.full, self.top, frozenset(self.peers) if self.peers else _NO_PEERS)
        self.full, self.top, self.peers = False, False, None
        self.wake.clear()
        return wake

    def take(self) -> tuple[bool, builtins.set[int]]:
        """(anything beyond peer entries changed, the peers that did)."""
        wake = self.take_wake()
        return wake.full or wake.top, set(wake.peers)
