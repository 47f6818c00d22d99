"""A map poll's stream: the first map, then deltas, keep-alives and pings
(protocol.md §4), and the delivery of an idle stream's delta without its
task (`_deliver`). A part of `ControlHandler` (server/control.py), which
routes the requests; split out so each reads in one sitting. A mixin, not a
member object, so that the calls made per session and per wave stay what
they were, with no further attribute hop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING, Literal

from server.metrics import Metrics
from server.protocol.mapframe import MapFrameEncoder
from server.tailnet import NodeRegistry, SessionHandle, Tailnet
from server.tailnet.keepalives import TICK, KeepAlives
from server.tailnet.mapper import MapContext
from server.tailnet.session import MapSession
from server.tailnet.staged import StagedSends
from server.tailnet.wave import StreamOutlet

if TYPE_CHECKING:
    from server.control import ControlSettings

__all__ = ["MapStreams", "ping_message"]


class MapStreams:
    """The streaming half of `ControlHandler`; it sets these in its __init__."""

    _tailnet: Tailnet
    _registry: NodeRegistry
    _clock: Callable[[], datetime]
    _settings: Callable[[], ControlSettings]
    _log: logging.Logger
    _rng: random.Random
    _metrics: Metrics
    _keepalives: KeepAlives
    _staged: StagedSends

    async def _settled(self) -> None:
        """Until the recompile that is due (a join: this node's own, likely) has
        been applied on its schedule: joins arriving together share it, where
        building the first map at once would force one per join."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def applied() -> None:
            if not done.done():  # a poll that ended while it waited
                done.set_result(None)

        if self._tailnet.after_settle(applied):
            await done

    async def _stream(
        self, node_id: int, send_now: Callable[[bytes], bool] | None = None
    ) -> AsyncIterator[bytes]:
        """The map stream: the first map, then what changed, keep-alives and
        pings. With `send_now` (the connection's, see `ControlRequest`), an
        idle stream's deltas are sent without resuming it (`_deliver`)."""
        encoder = MapFrameEncoder()
        session = MapSession(node_id)
        # Online before the recompile its join waits for: its peers learn that
        # it joined and that it is online in one wave, not two.
        self._registry.connected(node_id)
        handle: SessionHandle | None = None
        first = True
        held: list[bytes] = []  # a frame `_deliver` built and could not send
        try:
            await self._settled()
            handle = self._tailnet.open_session(node_id)
            deliver: Callable[[], bool] | None = None
            outlet: StreamOutlet | None = None
            if send_now is not None:
                deliver = partial(self._deliver, handle, session, encoder, send_now, held)
                outlet = StreamOutlet(session, encoder, send_now)
            while not handle.closed:
                if held:
                    yield held.pop()
                ping = handle.take_ping()
                if ping is not None:
                    yield encoder.encode(ping_message(ping))
                # The first map does not force a recompile that joins since are
                # waiting for: the session is woken when it lands.
                frame = self._catch_up(handle, session, encoder, settle=not first)
                first = False
                if frame is False:
                    return
                if frame is not None:
                    yield frame
                    del frame  # a map stream idles between messages: hold none of them
                self._metrics.caught_up(handle)
                # Keep-alives until woken: an idle stream's only work is the
                # keep-alive itself (it never looks at the tailnet), and 5,000
                # idle streams each wait here, on one timer (keepalives.py).
                while True:
                    if not handle.wake.is_set():
                        self._idle(handle)
                        handle.deliver, handle.outlet = deliver, outlet
                        try:
                            await handle.wake.wait()
                        finally:
                            handle.deliver = handle.outlet = None
                    if not handle.take_keepalive():
                        break
                    keepalive = encoder.keepalive()
                    yield keepalive
                    self._metrics.map_sent("keepalive", len(keepalive))
                    if handle.wake.is_set():
                        break
        finally:
            if handle is not None:
                self._keepalives.cancel(handle)
                self._metrics.session_closed(handle)
                self._tailnet.close_session(handle)
            self._registry.disconnected(node_id, self._clock())  # records last seen

    def _catch_up(
        self, handle: SessionHandle, session: MapSession, encoder: MapFrameEncoder, *, settle: bool
    ) -> bytes | None | Literal[False]:
        """The frame that brings the client to what its handle was marked with
        (None: it is up to date); False: the tailnet no longer serves it."""
        wake = handle.take_wake()
        now = self._clock()
        ctx = self._tailnet.context_for(handle.node_id, settle=settle)
        if not session.serves(ctx):
            return False
        msg = session.step(ctx, wake, now)
        # An idle stream holds neither the context (and through it the
        # whole policy index of its last message: 5,000 idle streams
        # kept hundreds of replaced indexes alive) nor what it sent.
        del ctx
        if msg is None:
            return None
        frame = encoder.encode(msg)
        self._metrics.map_sent("full" if wake.full or wake.top else "delta", len(frame))
        return frame

    def _wave_context(self) -> MapContext | None:
        """Every session's context, when it is one (not during a canary hold)."""
        return None if self._tailnet.candidate is not None else self._tailnet.context

    def _wave_sent(self, handles: list[SessionHandle], size: int) -> None:
        self._metrics.maps_sent("delta", len(handles), size)
        self._metrics.caught_up_all(handles)

    def _idle(self, handle: SessionHandle) -> None:
        """Its next keep-alive, a keep-alive period from now (the last message)."""
        settings = self._settings()
        wait = self._rng.uniform(settings.keepalive_min, settings.keepalive_max)
        loop = asyncio.get_running_loop()
        tick = min(TICK, settings.keepalive_min / 4)
        handle.keepalive = False  # a fresh wait: any earlier one is moot
        self._keepalives.schedule(handle, loop.time() + wait, tick)

    def _deliver(
        self,
        handle: SessionHandle,
        session: MapSession,
        encoder: MapFrameEncoder,
        send_now: Callable[[bytes], bool],
        held: list[bytes],
    ) -> bool:
        """What the stream's task would do when woken while it idles, done
        without resuming it (server/tailnet/handle.py): the delta, staged to
        go with the turn's others (staged.py). False: its task must run (a
        ping or keep-alive is due, the session ends). A frame that then
        cannot go (it must wait for the window) is `held` for the task to
        send and the task woken, so a blocked stream holds one message.

        The stream's keep-alive stays due when it was: a mesh wave delivers to
        every stream, and moving each one's deadline cost a tenth of the
        delivery; a keep-alive that follows a delta early is harmless (the
        client's watchdog is two minutes, the interval under one)."""
        if handle.closed or handle.ping is not None or handle.keepalive:
            return False
        frame = self._catch_up(handle, session, encoder, settle=True)
        if frame is False:
            return False
        if frame is not None:
            # Sent with the turn's other frames once they are all built;
            # one that cannot go then is held for the task (staged.py).
            self._staged.add(send_now, frame, handle, held)
            return True
        self._metrics.caught_up(handle)
        return True


def ping_message(url: str) -> bytes:
    """A MapResponse carrying only a PingRequest: the client sends ``HEAD url``
    over its Noise connection (tailscale control/controlclient/direct.go
    `answerPing`; a URL equal to the last one it answered is ignored)."""
    return json.dumps({"PingRequest": {"URL": url, "URLIsNoise": True}}).encode()
