"""Giving a burst's freed memory back to the system.

glibc's malloc returns freed memory to the kernel only from the top of its
heap. A registration storm or a large commit frees tens of MB in the middle
of the heap, and that stays in the process's RSS for its whole life: the same
1,000-node mesh benchmark left 52 to 120 KB of RSS a node between runs of
the same code, and the figure after 60 s idle was the same (README, December 7,
fourth round). `malloc_trim(0)` hands every whole free page back (madvise)
while keeping the memory mapped, so the next burst reuses the addresses.

`HeapTrim` reads the RSS (one read of /proc/self/statm) every `check_every`
seconds and trims once it has risen `growth` bytes above what the last trim
left, or `settled_growth` bytes once it stopped rising (a burst has settled):
a steady server never trims, a long storm is trimmed as it goes, and a short
one once, a few seconds after it. The second bar is for small tailnets: a
100-node mesh's registration storm grows the RSS by 4-7 MB, under `growth`, and
its holes (2-4 MB of free heap) stayed for the server's life, a fifth of its
memory per node (docs/bench/NOTE-mesh100.md, NOTE-memnode.md). Where there is
no glibc or no /proc the trim is simply absent.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from server.logs import event

__all__ = [
    "CHECK_EVERY",
    "GROWTH",
    "SETTLED_GROWTH",
    "HeapTrim",
    "TrimStats",
    "glibc_trim",
    "statm_rss",
]

CHECK_EVERY = 2.0  # seconds between RSS reads (a read costs ~10 us)
GROWTH = 8 << 20  # bytes of RSS growth since the last trim that earn a trim
# Bytes of growth that earn a trim once the RSS stopped rising. A trim that
# finds nothing free costs well under a millisecond and moves the floor up, so
# memory in use is trimmed for at most once per this much growth.
SETTLED_GROWTH = 1 << 20

_log = logging.getLogger(__name__)


@dataclass(slots=True)
class TrimStats:
    """What the trims did (tests and the log read these)."""

    trims: int = 0
    released: int = 0  # bytes of RSS the trims gave back, summed


def statm_rss() -> int | None:
    """This process's resident set in bytes, or None without /proc."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def glibc_trim() -> Callable[[], object] | None:
    """glibc's `malloc_trim(0)`, or None on a C library without it (musl, macOS)."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: trim(0)


class HeapTrim:
    """Trims the C heap after the RSS grew by `growth` bytes since the last trim."""

    def __init__(
        self,
        trim: Callable[[], object],
        rss: Callable[[], int | None],
        *,
        growth: int = GROWTH,
        settled_growth: int = SETTLED_GROWTH,
        check_every: float = CHECK_EVERY,
        clock: Callable[[], float] = time.perf_counter,
        cpu_clock: Callable[[], float] = time.thread_time,
    ) -> None:
        self._trim = trim
        self._rss = rss
        self._clock, self._cpu_clock = clock, cpu_clock
        self._growth, self._settled_growth = growth, settled_growth
        self._check_every = check_every
        self._floor = rss() or 0  # what the last trim (or start-up) left
        self._last = self._floor  # the previous check's RSS: still rising?
        self.stats = TrimStats()

    @classmethod
    def for_this_process(cls) -> HeapTrim | None:
        trim = glibc_trim()
        if trim is None or statm_rss() is None:
            return None
        return cls(trim, statm_rss)

    def check(self) -> None:
        """Trim if the RSS rose `growth` above the floor, or `settled_growth`
        and no higher since the last check; the floor follows the RSS after
        each trim, so memory in use is never trimmed for again."""
        now = self._rss()
        if now is None:
            return
        # A streaming server's RSS creeps up a few pages between most checks:
        # "rising" means a burst still under way.
        rising = now > self._last + self._settled_growth // 4
        self._last = now
        grown = now - self._floor
        if grown < self._growth and (rising or grown < self._settled_growth):
            self._floor = min(self._floor, now)
            return
        began, cpu = self._clock(), self._cpu_clock()
        self._trim()
        took_ms = (self._clock() - began) * 1000
        cpu_ms = (self._cpu_clock() - cpu) * 1000
        after = self._rss() or now
        self.stats.trims += 1
        self.stats.released += max(0, now - after)
        self._floor = self._last = after
        # At INFO with its cost (~1 ms for the ~8 MB a groups 5,000 commit
        # leaves; tens of ms after a storm that freed hundreds of MB): a
        # benchmark's server log shows whether one fell inside its window.
        _log.info(
            "heap trimmed in %.1f ms (%.1f ms CPU): RSS %.1f -> %.1f MB",
            took_ms,
            cpu_ms,
            now / 2**20,
            after / 2**20,
            extra=event(
                "heap.trimmed",
                took_ms=round(took_ms, 1),
                cpu_ms=round(cpu_ms, 1),
                rss_before=now,
                rss_after=after,
            ),
        )

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._check_every)
            self.check()
