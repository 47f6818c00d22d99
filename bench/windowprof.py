"""Run a module under cProfile, profiling only between two SIGUSR1s.

    python -m bench.windowprof OUT.prof -m server.cli serve ...

The first SIGUSR1 starts the profiler, the second stops it and writes OUT.prof
(pstats, CPU time) and OUT.txt (top functions by internal and cumulative time): a
benchmark profiles one phase (a fan-out) and not the registrations before it.
"""

from __future__ import annotations

import cProfile
import pstats
import runpy
import signal
import sys
import time
from pathlib import Path
from types import FrameType


def main() -> None:
    out = Path(sys.argv[1])
    if sys.argv[2] != "-m":
        raise SystemExit("usage: python -m bench.windowprof OUT.prof -m MODULE [ARGS...]")
    module, sys.argv = sys.argv[3], [sys.argv[3], *sys.argv[4:]]
    # CPU time, not wall time: on a loaded machine the process waits for a
    # core, and a wall-clock profile charges that wait to whatever ran last.
    profiler = cProfile.Profile(time.process_time)
    running = False

    def toggle(_sig: int, _frame: FrameType | None) -> None:
        nonlocal running
        if not running:
            running = True
            profiler.enable()
            return
        profiler.disable()
        running = False
        profiler.dump_stats(str(out))
        with out.with_suffix(".txt").open("w") as text:
            stats = pstats.Stats(str(out), stream=text)
            stats.sort_stats("tottime").print_stats(45)
            stats.sort_stats("cumulative").print_stats(60)

    signal.signal(signal.SIGUSR1, toggle)
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
