"""The benchmarks' memory switch: off by default; on, each snapshot writes
tracemalloc's view, the heap and who holds the types asked about."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

from server.memtrace import MemTrace


class Held:
    pass


def test_off_unless_the_environment_names_a_directory() -> None:
    assert MemTrace.from_env({}) is None


def test_a_snapshot_names_sizes_sites_and_holders(tmp_path: Path) -> None:
    env = {
        "TAILNETD_TRACEMALLOC": str(tmp_path),
        "TAILNETD_TRACEMALLOC_HOLDERS": "Held",
    }
    trace = MemTrace.from_env(env)
    assert trace is not None
    keep = {"holder": Held()}
    trace.start()
    try:
        first, second = trace.snapshot(), trace.snapshot()
    finally:
        tracemalloc.stop()
    assert (first.name, second.name) == ("snap-0", "snap-1")
    tracemalloc.Snapshot.load(str(second.with_suffix(".tracemalloc")))
    text = second.with_suffix(".txt").read_text()
    assert text.startswith("rss ")
    assert "1 alive: Held" in text
    assert "Held <- dict['holder']" in text
    assert keep
