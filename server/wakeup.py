"""A wake-up flag for one long-lived waiter, costing nothing while idle."""

from __future__ import annotations

import asyncio

__all__ = ["Wakeup"]


class Wakeup:
    """`asyncio.Event`'s set, clear, is_set and wait, with its list of waiters
    made only while someone waits: an Event holds a deque (~600 bytes) from
    birth, and every streaming map session and DERP client has one."""

    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = False
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        if self._set:
            return
        self._set = True
        for waiter in self._waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._set = False

    async def wait(self) -> bool:
        if self._set:
            return True
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        try:
            await waiter
            return True
        finally:
            self._waiters.remove(waiter)
            if not self._waiters:
                self._waiters = None
