"""glibc's heap: how much of it is free, and giving that back.

A burst (thousands of registrations, a reconnect storm, a commit's compile)
leaves freed memory in glibc's heap: pymalloc's arenas come and go through
mmap, but every larger object (dicts, sets, lists, bytes above 512 bytes) is
glibc's, and freed chunks between live ones stay resident until
`malloc_trim` hands their pages back. `HeapTrim` looks every few seconds and
trims when the free part grew by enough since its last trim (a burst ended),
not while it merely stays high (chunks smaller than a page, which no trim can
give back). Elsewhere than glibc both are no-ops.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import time
from collections.abc import Callable

__all__ = ["HeapTrim", "heap_info", "trim_heap"]

TRIM_INTERVAL = 5.0  # seconds between looks (mallinfo2: a pass over the free lists)
TRIM_FREE = 16 * 2**20  # freed bytes since the last trim that make one worth its pass


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",  # bytes from brk
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",  # bytes mmapped
            "usmblks",
            "fsmblks",
            "uordblks",  # bytes in use
            "fordblks",  # bytes free (fragmentation, or not yet returned)
            "keepcost",
        )
    ]


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None


_LIBC = _libc()


def heap_info() -> dict[str, int]:
    """glibc's main-arena heap in bytes (empty where there is no mallinfo2)."""
    fn = getattr(_LIBC, "mallinfo2", None)
    if fn is None:
        return {}
    fn.restype = _MallInfo2
    info = fn()
    return {
        "brk_arena": info.arena,
        "mmapped": info.hblkhd,
        "in_use": info.uordblks,
        "free": info.fordblks,
    }


def trim_heap() -> bool:
    """Give glibc's free heap pages back to the system (malloc_trim(0))."""
    fn = getattr(_LIBC, "malloc_trim", None)
    return bool(fn(0)) if fn is not None else False


class HeapTrim:
    """Every `interval` seconds: trim glibc's heap when its free bytes grew by
    at least `free` since the last trim (what a burst left behind), not
    otherwise (a trim walks the whole heap)."""

    def __init__(
        self,
        *,
        log: logging.Logger,
        interval: float = TRIM_INTERVAL,
        free: int = TRIM_FREE,
        info: Callable[[], dict[str, int]] = heap_info,
        trim: Callable[[], bool] = trim_heap,
    ) -> None:
        self._log, self._interval, self._free = log, interval, free
        self._info, self._trim = info, trim
        self._left = 0  # free bytes the last trim left (could not give back)
        self.trims = 0

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            self.handle_timer()

    def handle_timer(self) -> bool:
        """Trim if enough was freed since the last trim; whether it did."""
        free = self._info().get("free", 0)
        self._left = min(self._left, free)  # reused since: counts as freed again
        if free - self._left < self._free:
            return False
        began = time.perf_counter()
        self._trim()
        self._left = self._info().get("free", 0)
        self.trims += 1
        self._log.debug(
            "heap: trimmed %d MiB free in %.1f ms", free >> 20, (time.perf_counter() - began) * 1e3
        )
        return True
