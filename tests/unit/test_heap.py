"""Giving a burst's freed heap back: trimmed only when enough of it is free."""

from __future__ import annotations

import logging

from server.heap import HeapTrim, heap_info, trim_heap


def test_trims_only_when_enough_is_free() -> None:
    free = [0]
    trims: list[int] = []

    def trim() -> bool:
        trims.append(free[0])
        free[0] = 30  # chunks smaller than a page stay
        return True

    heap = HeapTrim(
        log=logging.getLogger("test"), free=100, info=lambda: {"free": free[0]}, trim=trim
    )
    assert not heap.handle_timer()
    free[0] = 99
    assert not heap.handle_timer()
    free[0] = 100
    assert heap.handle_timer()
    assert not heap.handle_timer()  # what is left cannot be given back
    free[0] = 129
    assert not heap.handle_timer()
    free[0] = 10  # reused
    assert not heap.handle_timer()
    free[0] = 110
    assert heap.handle_timer()  # freed again, by the next burst
    assert trims == [100, 110]


def test_glibc_reports_its_heap() -> None:
    info = heap_info()
    # On glibc (this project's machines): in use and free bytes; elsewhere nothing.
    assert not info or info["in_use"] > 0 <= info["free"]
    trim_heap()
