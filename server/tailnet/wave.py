"""A volatile wave's deliveries in bulk: one node's endpoints (or online
state) changed, and each of its viewers that is caught up but for it gets
the one shared frame, without a step of its own.

The general delivery (`MapStreams._deliver`, server/map_streams.py) takes a
session's marks, looks its context up, steps its `MapSession`, finds the
shared message and its frame, counts it and sends it: ~75 Python calls per
viewer, the same work a thousand times over in a mesh. Here the message, its
frame and the count are made once per distinct `PeerView` of the mover, and
a viewer that passes a cheap check goes straight to its connection's
`send_now`. The check is what `MapSession.step` would have found (it holds
the view, entries and users of the serving context, so the message is the
`_moved` delta) plus what makes that delta the shared one: it sees every
mover it is marked with (one, or several whose changes came together) and
was already sent their owners' profiles. Anyone else (a canary rollout, a
ping or keep-alive due, its own record changed, a closed window or a
backed-up socket in `send_now`) is handed back for the general path, which
sends the same bytes or waits in its task.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from server.protocol.mapframe import MapFrameEncoder
from server.tailnet.handle import SessionHandle
from server.tailnet.mapper import MapContext
from server.tailnet.nodejson import owner_of
from server.tailnet.session import MapSession
from server.tailnet.views import PeerView

__all__ = ["StreamOutlet", "VolatileWave"]


@dataclass(frozen=True, slots=True)
class StreamOutlet:
    """What a wave needs of one idle map stream: its session, its frame
    encoder and its connection's `send_now` (False: not sent, nothing queued)."""

    session: MapSession
    encoder: MapFrameEncoder
    send_now: Callable[[bytes], bool]


class VolatileWave:
    """Delivers the handles of one `Deliveries` turn that it can and hands
    back the rest. `context` is the serving context, or None when sessions
    may be served from different ones (a canary rollout); `sent` is told of
    the handles sent to and the bytes that took (metrics)."""

    def __init__(
        self,
        context: Callable[[], MapContext | None],
        clock: Callable[[], datetime],
        sent: Callable[[list[SessionHandle], int], None],
    ) -> None:
        self._context = context
        self._clock = clock
        self._sent = sent
        self.delivered = 0  # handles this path sent to (what tests count)

    def __call__(self, due: list[SessionHandle]) -> list[SessionHandle]:
        ctx = self._context()
        if ctx is None:
            return due
        now = self._clock()
        rest: list[SessionHandle] = []
        done: list[SessionHandle] = []
        size = 0
        movers: dict[int, tuple[int, bool] | None] = {}  # mover -> (owner id, online)
        frames: dict[int, tuple[PeerView, bytes]] = {}  # id(PeerView) -> (it, its frame)
        several = _Several()
        nodes, online, gen = ctx.nodes, ctx.online, ctx.entries.log.gen
        for handle in due:
            outlet, peers = handle.outlet, handle.peers
            if (
                outlet is None
                or not peers
                or handle.full
                or handle.top
                or handle.closed
                or handle.ping is not None
                or handle.keepalive
                or handle.wake.is_set()
            ):
                rest.append(handle)
                continue
            frame: bytes | None = None
            try:
                if len(peers) > 1:
                    frame = self._several(ctx, outlet, sorted(peers), now, gen, several)
                else:
                    (mover,) = peers
                    if mover in movers:
                        about = movers[mover]
                    else:
                        node = nodes.get(mover)
                        about = None if node is None else (owner_of(node)[0], mover in online)
                        movers[mover] = about
                    pv = (
                        None
                        if about is None
                        else outlet.session.shared_peer(ctx, mover, about[0], gen)
                    )
                    held = None if pv is None else frames.get(id(pv))
                    if held is not None:
                        frame = held[1]
                    elif pv is not None and about is not None:
                        entry = ctx.entries.get(nodes[mover], pv, about[1], now)
                        msg = ctx.entries.deltas.message("PeersChanged", [entry], [], [], now)
                        frame = outlet.encoder.encode(msg)
                        frames[id(pv)] = (pv, frame)
                sent = frame is not None and outlet.send_now(frame)
            except Exception:  # noqa: BLE001 - the general path meets it again and reports it
                sent = False
            if not sent:
                rest.append(handle)  # the general path sends it or holds it for its task
                continue
            handle.peers = None
            handle.due = False
            done.append(handle)
            size += len(frame or b"")
        if done:
            self.delivered += len(done)
            self._sent(done, size)
        return rest

    def _several(
        self,
        ctx: MapContext,
        outlet: StreamOutlet,
        movers: list[int],
        now: datetime,
        gen: int,
        held: _Several,
    ) -> bytes | None:
        """The frame for a viewer marked with several movers (changes that
        came together), when it is the one every viewer seeing them alike
        sends; None: the general path."""
        key = tuple(movers)
        about = held.movers.get(key)
        if about is None:
            nodes = [ctx.nodes.get(m) for m in movers]
            if None in nodes:
                return None
            owners = frozenset(owner_of(n)[0] for n in nodes if n is not None)
            about = held.movers[key] = (owners, [m in ctx.online for m in movers])
        pvs = outlet.session.shared_peers(ctx, movers, about[0], gen)
        if pvs is None:
            return None
        shown = (*key, *map(id, pvs))
        got = held.frames.get(shown)
        if got is not None:
            return got[1]
        get, online = ctx.entries.get, about[1]
        entries = [
            get(ctx.nodes[m], pv, online[i], now)
            for i, (m, pv) in enumerate(zip(movers, pvs, strict=True))
        ]
        frame = outlet.encoder.encode(
            ctx.entries.deltas.message("PeersChanged", entries, [], [], now)
        )
        held.frames[shown] = (pvs, frame)  # the PeerViews kept: their ids stay theirs
        return frame


@dataclass(slots=True)
class _Several:
    """A wave's viewers marked with several movers: per movers, their
    owners and online states; per (movers, ids of the PeerViews shown),
    those PeerViews and their frame."""

    movers: dict[tuple[int, ...], tuple[frozenset[int], list[bool]]] = field(default_factory=dict)
    frames: dict[tuple[int, ...], tuple[list[PeerView], bytes]] = field(default_factory=dict)
