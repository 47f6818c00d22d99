"""Where the server's memory goes, for benchmarks: off unless asked for.

`TAILNETD_TRACEMALLOC=DIR` starts `tracemalloc` when `tailnetd serve` starts, and
each SIGUSR2 then writes `DIR/snap-N.tracemalloc` (a `tracemalloc.Snapshot`,
for `Snapshot.load(...).compare_to(...)`) and `DIR/snap-N.txt`: the process's
RSS, what tracemalloc traces, glibc's heap (mallinfo2: in use, free, mmapped),
and the top allocation sites by line. `TAILNETD_TRACEMALLOC_FRAMES` (default 1)
keeps that many frames per allocation (more: slower, and a bigger snapshot).
`TAILNETD_TRACEMALLOC_HOLDERS=ViewIndex,Index` adds, per type named, how many
are alive and a chain of referrers from a few of them (who keeps them).
`bench.bench_socket --tracemalloc DIR` drives it; nothing else reads it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import tracemalloc
import types
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

from server.heaptrim import statm_rss

__all__ = ["MemTrace"]

ENV = "TAILNETD_TRACEMALLOC"
FRAMES_ENV = "TAILNETD_TRACEMALLOC_FRAMES"
HOLDERS_ENV = "TAILNETD_TRACEMALLOC_HOLDERS"
TOP = 60


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


def _type_counts(top: int = 30) -> list[str]:
    """The commonest types among the objects the collector tracks."""
    counts = Counter(type(o).__qualname__ for o in gc.get_objects())
    return [f"{n:>12} objects {name}" for name, n in counts.most_common(top)]


def _describe(obj: object) -> str:
    name = type(obj).__qualname__
    if isinstance(obj, dict):
        keys = [k if isinstance(k, str | int) else type(k).__name__ for k in list(obj)[:6]]
        return f"{name}{keys}"
    if isinstance(obj, list | tuple):
        return f"{name}[len {len(obj)}]"
    return name


def _holders(typename: str, samples: int = 3, depth: int = 14) -> list[str]:
    """How many `typename` objects are alive, and for a few of them the first
    referrer of each referrer in turn (\"+n\": n more referrers besides)."""
    everything = gc.get_objects()
    found = [o for o in everything if type(o).__qualname__ == typename]
    out = [f"{len(found)} alive: {typename}"]
    picks = found[:: max(1, len(found) // samples)][:samples]
    del found
    for obj in picks:
        chain = [_describe(obj)]
        ours = {id(everything), id(picks), id(chain), id(obj)}
        current = obj
        for _ in range(depth):
            referrers = gc.get_referrers(current)
            ours.add(id(referrers))
            others = [
                r for r in referrers if id(r) not in ours and not isinstance(r, types.FrameType)
            ]
            ours.add(id(others))
            if not others:
                break
            current = others[0]
            ours.add(id(current))
            more = f" (+{len(others) - 1})" if len(others) > 1 else ""
            chain.append(_describe(current) + more)
        out.append("  " + " <- ".join(chain))
    return out


class MemTrace:
    """Snapshots into one directory, numbered in the order they are asked for."""

    def __init__(self, directory: Path, frames: int = 1, holders: tuple[str, ...] = ()) -> None:
        self.directory = directory
        self.frames = frames
        self.holders = holders
        self.taken = 0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> MemTrace | None:
        env = os.environ if env is None else env
        where = env.get(ENV)
        if not where:
            return None
        holders = tuple(filter(None, env.get(HOLDERS_ENV, "").split(",")))
        return cls(Path(where), int(env.get(FRAMES_ENV, "1")), holders)

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        tracemalloc.start(self.frames)

    def snapshot(self) -> Path:
        """Write snapshot N (after a collection: what is live, not garbage)."""
        gc.collect()
        snap = tracemalloc.take_snapshot()
        base = self.directory / f"snap-{self.taken}"
        self.taken += 1
        snap.dump(str(base.with_suffix(".tracemalloc")))
        traced, peak = tracemalloc.get_traced_memory()
        lines = [
            f"rss {statm_rss() or 0}",
            f"traced {traced} peak {peak}",
            "heap " + " ".join(f"{k} {v}" for k, v in heap_info().items()),
            f"gc objects {len(gc.get_objects())} frozen {gc.get_freeze_count()}",
            "",
        ]
        lines += _type_counts()
        for name in self.holders:
            lines += _holders(name)
        lines.append("")
        for stat in snap.statistics("lineno")[:TOP]:
            frame = stat.traceback[0]
            lines.append(f"{stat.size:>12} {stat.count:>9} {frame.filename}:{frame.lineno}")
        base.with_suffix(".txt").write_text("\n".join(lines) + "\n")
        return base
