"""One timer for every idle map stream's keep-alive.

A client drops its map stream after two minutes without a message
(tailscale control/controlclient: the map poll's watchdog), so each idle
stream sends a keep-alive every 50-58 s. With 5,000 streams an asyncio
timeout per wait is 5,000 timers in the loop's heap, each firing by cancelling
its task and unwinding the stream through an exception. Here every stream's
deadline goes in a slot of `tick` seconds; one loop timer fires at the
earliest slot and marks the streams due there (`SessionHandle.mark_keepalive`),
which wake as for any other change. `handle_timer(now)` is the step the tests
drive; `schedule` arms the loop's one timer. A stream that sends a message
pushes its deadline later; that is only noted (`_later`), and the stream is
moved to its later slot when its old one comes due: a mesh's endpoint
changes wake every stream every few seconds, and each must not move in the
wheel each time.
"""

from __future__ import annotations

import asyncio
import math

from server.tailnet.hub import SessionHandle

__all__ = ["KeepAlives"]

TICK = 1.0  # seconds: a keep-alive goes at most this much after its deadline
MIN_TICK = 0.001


class KeepAlives:
    """Deadlines (loop time) of the streams waiting for their next keep-alive."""

    def __init__(self) -> None:
        self._slots: dict[float, dict[SessionHandle, None]] = {}
        self._slot_of: dict[SessionHandle, float] = {}
        # Deadlines later than the slot a stream is in: (deadline, tick).
        self._later: dict[SessionHandle, tuple[float, float]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf

    def __len__(self) -> int:
        return len(self._slot_of)

    def schedule(self, handle: SessionHandle, at: float, tick: float = TICK) -> None:
        """`handle`'s next keep-alive is due at `at` (replacing the one it had)."""
        tick = max(tick, MIN_TICK)
        held = self._slot_of.get(handle)
        if held is not None and held <= at:
            self._later[handle] = (at, tick)  # moved when `held` comes due
            return
        self.cancel(handle)
        self._file(handle, at, tick)

    def _file(self, handle: SessionHandle, at: float, tick: float) -> None:
        slot = math.ceil(at / tick) * tick
        self._slots.setdefault(slot, {})[handle] = None
        self._slot_of[handle] = slot
        if slot < self._timer_at:
            self._arm(slot)

    def cancel(self, handle: SessionHandle) -> None:
        self._later.pop(handle, None)
        slot = self._slot_of.pop(handle, None)
        if slot is None:
            return
        waiting = self._slots[slot]
        del waiting[handle]
        if not waiting:
            del self._slots[slot]

    def handle_timer(self, now: float) -> list[SessionHandle]:
        """Mark the streams whose keep-alive is due by `now`; returns them."""
        due: list[SessionHandle] = []
        for slot in sorted(s for s in self._slots if s <= now):
            for handle in self._slots.pop(slot):
                del self._slot_of[handle]
                later = self._later.pop(handle, None)
                if later is not None and later[0] > now:
                    self._file(handle, *later)  # it sent a message since: not due yet
                    continue
                handle.mark_keepalive()
                due.append(handle)
        return due

    def next_due(self) -> float | None:
        return min(self._slots, default=None)

    def _arm(self, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_at(at, self._fire)
        self._timer_at = at

    def _fire(self) -> None:
        # The loop may run a timer up to its clock's resolution early: the
        # slot it was armed for is due all the same.
        at, self._timer, self._timer_at = self._timer_at, None, math.inf
        self.handle_timer(max(asyncio.get_running_loop().time(), at))
        due = self.next_due()
        if due is not None:
            self._arm(due)
