"""When a change that others may share is applied: a topology change's
recompile, a burst of volatile changes' wave (server/tailnet/hubsettle.py).

A `Defer` runs a callback later so that the changes arriving meanwhile share
it; `LoopDefer` is the one the server runs with, on its event loop.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from functools import partial

__all__ = [
    "COALESCE_MAX_SECONDS",
    "COALESCE_SECONDS",
    "COALESCE_WORTH_SECONDS",
    "Defer",
    "LoopDefer",
    "defer_on_loop",
]

# How long a topology change waits for others to share its recompile, at least
# and at most: the window grows with what the last recompile cost, so joins
# arriving continuously share one recompile instead of each paying for its own.
COALESCE_SECONDS = 0.005
COALESCE_MAX_SECONDS = 0.1
# A call after a run (with its wave) cheaper than this does not wait for the
# window: the wait makes the process sleep and wake again between a change
# and its wave, and that second wake-up of a cold process cost ~0.45 ms of
# server CPU per endpoint change here, more than such a run costs to repeat
# for a change that would have shared it (docs/bench/NOTE-fixedcost2.md).
COALESCE_WORTH_SECONDS = 0.001

# Runs the callback later and says True, or says False when it cannot (the
# caller then runs it now).
Defer = Callable[[Callable[[], None]], bool]


def defer_on_loop(fn: Callable[[], None]) -> bool:
    """`fn` after `COALESCE_SECONDS` on the running event loop; False without one
    (synchronous callers: tools, tests) so the change applies at once."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return False
    loop.call_later(COALESCE_SECONDS, fn)
    return True


_KINDS_KEPT = 8  # the hub defers two (recompile, volatile wave); callers of lambdas more


def _kind(fn: Callable[[], None] | None) -> object:
    """What a deferred call is: its function (a bound method's, which is
    made anew at each attribute access)."""
    return getattr(fn, "__func__", fn)


class LoopDefer:
    """A `Defer` on the running event loop that waits only when changes are
    coming close together. False without a running loop (the change applies
    at once).

    At a quiet moment (nothing deferred waiting or running, and the last wave
    over for longer than the window) a call runs on the loop's next turn: a
    lone endpoint change or join must not wait for company that is not
    coming (at 5,000 nodes the window left by a commit's wave was 100 ms of
    every later event's latency). Changes made in the same turn still share
    that run.

    A call whose function's last run was cheap (under
    `COALESCE_WORTH_SECONDS` of CPU, with its wave) does not wait either:
    sharing such a run saves less than the wait costs.
    A small tailnet's endpoint changes, or a groups tailnet's (a few dozen
    viewers each), then go one wave each, each on the turn after it came.

    Otherwise the call waits for the window, which follows the load: as long
    as the last deferred call took, with the wave it started (between
    `COALESCE_SECONDS` and `COALESCE_MAX_SECONDS`), so a recompile and the
    sessions it wakes cost at most about half of the loop while changes keep
    arriving; the first change of a burst goes at once, the rest share waves.

    The window counts from the call, not from the end of the last wave:
    counted from the wave's end, a join arriving after a short lull ran
    almost at once and took a wave of its own, and a 400-node mesh's clients
    got 97-114 messages each while registering instead of 54-81 (more waves:
    more server CPU per registration, 12-17 ms against 10-13, and more for
    every client to decode), for no better rate (docs/bench/NOTE-meshrate.md).

    The wave: the sessions a call wakes run in the loop's next turn (each
    builds and queues its message) and their connections write in the turn
    after; the window is measured to the end of those two turns. In a
    1,000-node mesh a join's wave is most of its cost, not the recompile."""

    # What a run costs is read on the CPU clock: on a loaded machine the wall
    # clock would count the waits for a core, and cheap runs would wait.
    cpu_clock: Callable[[], float] = staticmethod(time.thread_time)

    def __init__(self) -> None:
        self.window = COALESCE_SECONDS
        self._loop: asyncio.AbstractEventLoop | None = None  # where `_busy` counts
        self._busy = 0  # calls deferred whose wave has not ended
        self._quiet_at = -math.inf  # loop time from which, with none busy, a call goes at once
        # CPU seconds the last run of each function took, with its wave: a
        # cheap endpoint wave must not make the next join's recompile go alone.
        self._costs: dict[object, float] = {}

    def delay(self, now: float, fn: Callable[[], None] | None = None) -> float:
        """Seconds a call (of `fn`) made at `now` waits."""
        if self._busy:
            return self.window
        cost = self._costs.get(_kind(fn), math.inf)  # not run yet: as if it were dear
        if now < self._quiet_at and cost >= COALESCE_WORTH_SECONDS:
            return self.window
        return 0.0

    def __call__(self, fn: Callable[[], None]) -> bool:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
        if loop is not self._loop:  # a wave of a loop that stopped never ends
            self._loop, self._busy, self._quiet_at = loop, 0, -math.inf

        kind = _kind(fn)
        if len(self._costs) > _KINDS_KEPT and kind not in self._costs:
            self._costs.clear()

        def run() -> None:
            start, cpu = loop.time(), self.cpu_clock()

            def waved(*, ended: bool) -> None:
                now = loop.time()
                self._costs[kind] = self.cpu_clock() - cpu
                self.window = min(COALESCE_MAX_SECONDS, max(COALESCE_SECONDS, now - start))
                self._quiet_at = now + self.window
                if ended:
                    self._busy -= 1

            try:
                fn()
            finally:
                waved(ended=False)  # the call alone, should the loop stop before the wave ends
                loop.call_soon(loop.call_soon, partial(waved, ended=True))

        delay = self.delay(loop.time(), fn)
        self._busy += 1
        if delay:
            loop.call_later(delay, run)
        else:
            loop.call_soon(run)
        return True
