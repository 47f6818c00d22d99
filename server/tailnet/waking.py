"""Waking many streaming sessions without holding the event loop.

A commit wakes every session it may change: 50,000 of them. Each woken
session builds and sends its message when the loop runs it, and asyncio runs
every task made ready in one iteration without polling sockets in between,
so waking them all at once would hold DERP and control traffic for the
whole fan-out (seconds). `PacedWakes` sets their events a batch at a time
and yields to the loop between batches: sockets are served between them,
and the fan-out costs the same CPU.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from typing import Protocol

__all__ = ["WAKE_BATCH", "PacedWakes", "Wakeable"]


class Wakeable(Protocol):
    """What is woken: an `asyncio.Event` or a session's `Wakeup`."""

    def set(self) -> None: ...


# Sessions woken per loop iteration: at ~0.1 ms of CPU each (a commit's
# message), about 25 ms of loop time per batch.
WAKE_BATCH = 256


class PacedWakes:
    """Sets wake events, at most ``batch`` per loop iteration. Without a
    running loop (or with few events and none queued) it sets them at once.
    `batches` counts the batches set from the queue (what tests count)."""

    def __init__(self, batch: int = WAKE_BATCH) -> None:
        self.batch = batch
        self.batches = 0
        self._queue: deque[Wakeable] = deque()
        self._task: asyncio.Task[None] | None = None
        self._drained: list[Callable[[], None]] = []

    def when_drained(self, fn: Callable[[], None]) -> None:
        """Call `fn` once every event queued is set and the sessions woken
        by the last batch have run (their messages built): the fan-out is
        over. At once without a running loop; on the next iteration when
        nothing is queued."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            fn()
            return
        if self._queue:
            self._drained.append(fn)
        else:  # the sessions set just now run first (their wakeups were queued before)
            loop.call_soon(fn)

    def set(self, events: Sequence[Wakeable]) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None or (len(events) <= self.batch and not self._queue):
            for event in events:
                event.set()
            return
        self._queue.extend(events)
        task = self._task
        if task is None or task.done() or task.get_loop() is not loop:
            self._task = loop.create_task(self._run())

    @property
    def pending(self) -> int:
        """Events queued, not set yet."""
        return len(self._queue)

    async def _run(self) -> None:
        queue = self._queue
        try:
            while queue:
                for _ in range(min(self.batch, len(queue))):
                    queue.popleft().set()
                self.batches += 1
                await asyncio.sleep(0)  # the woken sessions run, then sockets are polled
        finally:  # cancelled too: a hold waiting for the drain must not stay
            drained, self._drained = self._drained, []
            for fn in drained:
                fn()
