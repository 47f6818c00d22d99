"""After a burst, the freed C heap goes back to the system (server/heaptrim.py),
and what the first client needs is loaded before it comes (server/cli.py)."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from server.heaptrim import HeapTrim, glibc_trim, statm_rss
from tests.e2e.harness import ROOT

MB = 1 << 20


class FakeHeap:
    """An RSS that grows by hand and shrinks to `kept` when trimmed."""

    def __init__(self, rss: int) -> None:
        self.rss = rss
        self.kept = rss
        self.trims = 0

    def trim(self) -> None:
        self.trims += 1
        self.rss = self.kept


def test_a_steady_server_is_never_trimmed() -> None:
    heap = FakeHeap(100 * MB)
    trim = HeapTrim(heap.trim, lambda: heap.rss, growth=8 * MB, settled_growth=1 * MB)
    heap.rss += MB // 2
    for _ in range(100):
        trim.check()
    assert heap.trims == 0


def test_a_small_burst_is_trimmed_once_it_settles_not_while_it_grows() -> None:
    # A 100-node mesh's registration storm: RSS up 5 MB, under the 8 MB bar,
    # 4 MB of it free holes that only a trim gives back.
    heap = FakeHeap(100 * MB)
    trim = HeapTrim(heap.trim, lambda: heap.rss, growth=8 * MB, settled_growth=1 * MB)
    heap.kept = 101 * MB
    for rss in (102, 104, 105):
        heap.rss = rss * MB
        trim.check()
    assert heap.trims == 0  # still rising
    trim.check()
    assert heap.trims == 1 and heap.rss == 101 * MB
    assert trim.stats.released == 4 * MB
    for _ in range(100):  # the 1 MB in use is the new floor
        trim.check()
    assert heap.trims == 1


def test_a_burst_is_trimmed_though_the_rss_still_creeps_up_a_page_or_two() -> None:
    heap = FakeHeap(100 * MB)
    trim = HeapTrim(heap.trim, lambda: heap.rss, growth=8 * MB, settled_growth=1 * MB)
    heap.rss = 105 * MB
    trim.check()
    heap.rss += 8192  # two more pages: settled all the same
    heap.kept = 101 * MB
    trim.check()
    assert heap.trims == 1 and heap.rss == 101 * MB


def test_a_burst_is_trimmed_once_and_what_is_in_use_is_not_trimmed_for_again() -> None:
    heap = FakeHeap(100 * MB)
    trim = HeapTrim(heap.trim, lambda: heap.rss, growth=8 * MB)
    heap.kept = 104 * MB  # the burst left 4 MB in use and 26 MB free
    heap.rss = 130 * MB
    trim.check()
    assert heap.trims == 1 and heap.rss == 104 * MB
    assert trim.stats.trims == 1 and trim.stats.released == 26 * MB
    # The 4 MB in use is the new floor: the next checks do nothing.
    heap.rss = 110 * MB
    trim.check()
    assert heap.trims == 1
    heap.rss = 113 * MB
    trim.check()
    assert heap.trims == 2


def test_the_floor_follows_the_rss_down() -> None:
    heap = FakeHeap(100 * MB)
    trim = HeapTrim(heap.trim, lambda: heap.rss, growth=8 * MB)
    heap.rss = heap.kept = 60 * MB  # freed from the top of the heap by malloc itself
    trim.check()
    heap.rss = 69 * MB  # 9 MB above the new floor, below the old one
    trim.check()
    assert heap.trims == 1


def test_glibc_gives_a_fragmented_heap_back() -> None:
    trim, rss = glibc_trim(), statm_rss()
    assert trim is not None and rss is not None  # the machines we serve from: glibc, /proc
    heap = HeapTrim(trim, statm_rss, growth=16 * MB)
    # 64 MB in 16 KB blocks, each followed by a 1 KB block that stays: freeing
    # the large ones leaves whole free pages in the middle of the heap, which
    # malloc keeps in the RSS until trimmed.
    large, small = [], []
    for _ in range(4096):
        large.append(bytearray(16 * 1024))
        small.append(bytearray(1024))
    del large
    heap.check()
    assert heap.stats.trims == 1 and heap.stats.released > 32 * MB
    del small


SETTLED = """
import asyncio, gc, sys
import server.cli as cli
cli.SETTLE_AFTER = 0

async def main():
    gc.disable()  # as `tailnetd serve` starts
    settle = asyncio.create_task(cli._settle())
    for _ in range(400):
        await asyncio.sleep(0.05)
        if gc.isenabled():  # the settle's imports done, the collector back on
            break
    loaded = [m in sys.modules for m in ("nacl.bindings", "server.api._app", "server.heaptrim")]
    print(*loaded, not settle.done())
    settle.cancel()

asyncio.run(main())
"""


def test_after_start_up_libsodium_is_loaded_and_the_heap_trim_runs() -> None:
    done = subprocess.run(
        [sys.executable, "-c", SETTLED], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    # Loaded before the first handshake needs them; the trim's loop still running.
    assert done.stdout.split() == ["True", "True", "True", "True"]


def test_a_trim_is_logged_at_info_with_its_cost_and_the_rss(
    caplog: pytest.LogCaptureFixture,
) -> None:
    heap = FakeHeap(100 * MB)
    ticks = iter([10.0, 10.015])  # the trim took 15 ms
    cpu = iter([1.0, 1.012])
    trim = HeapTrim(
        heap.trim, lambda: heap.rss, growth=8 * MB, clock=ticks.__next__, cpu_clock=cpu.__next__
    )
    heap.rss = 130 * MB
    with caplog.at_level(logging.INFO, logger="server.heaptrim"):
        trim.check()
    (record,) = caplog.records
    assert record.levelno == logging.INFO
    assert record.getMessage() == "heap trimmed in 15.0 ms (12.0 ms CPU): RSS 130.0 -> 100.0 MB"
    assert (record.took_ms, record.rss_before, record.rss_after) == (15.0, 130 * MB, 100 * MB)
