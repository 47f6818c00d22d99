"""When a change that others may share is applied: a topology change's
recompile, a burst of volatile changes' wave (server/tailnet/hub.py).

A `Defer` runs a callback later so that the changes arriving meanwhile share
it; `LoopDefer` is the one the server runs with, on its event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

__all__ = [
    "COALESCE_MAX_SECONDS",
    "COALESCE_SECONDS",
    "Defer",
    "LoopDefer",
    "defer_on_loop",
]

# How long a topology change waits for others to share its recompile, at least
# and at most: the window grows with what the last recompile cost, so joins
# arriving continuously share one recompile instead of each paying for its own.
COALESCE_SECONDS = 0.005
COALESCE_MAX_SECONDS = 0.1

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


class LoopDefer:
    """A `Defer` on the running event loop whose window follows the load: the
    next call waits as long as the last deferred call took, with the wave it
    started (between `COALESCE_SECONDS` and `COALESCE_MAX_SECONDS`), so a
    recompile and the sessions it wakes cost at most about half of the loop
    while changes keep arriving. False without a running loop (the change
    applies at once).

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

    def __init__(self) -> None:
        self.window = COALESCE_SECONDS

    def delay(self, now: float) -> float:
        """Seconds a call made at `now` waits."""
        return self.window

    def __call__(self, fn: Callable[[], None]) -> bool:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False

        def run() -> None:
            start = loop.time()

            def waved() -> None:
                spent = loop.time() - start
                self.window = min(COALESCE_MAX_SECONDS, max(COALESCE_SECONDS, spent))

            try:
                fn()
            finally:
                waved()  # the call alone, should the loop stop before the wave ends
                loop.call_soon(loop.call_soon, waved)

        loop.call_later(self.delay(loop.time()), run)
        return True
