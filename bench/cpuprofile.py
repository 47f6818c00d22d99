"""`python -m bench.cpuprofile -o OUT -m MODULE [ARGS…]`: run MODULE as
`python -m` would, under cProfile timed by the process's CPU clock.

`-m cProfile` times calls by the wall clock. On a shared machine that charges a
function for the time the process waited to be scheduled: under load, a
server's `socket.send` (which wakes the receiver, who then takes the core)
looked like a fifth of its time (docs/bench/NOTE-sparsereg.md). With
`time.process_time` a call costs what this process spent on it; time blocked
in `epoll` and time preempted do not count. The stats are written when MODULE
returns, raises or exits (SIGTERM is turned into an exit, as a server stops).
"""

from __future__ import annotations

import cProfile
import runpy
import signal
import sys
import time
from types import FrameType


def _exit(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    # Everything after the module's name is the module's own (as with `python -m`).
    if len(args) < 4 or args[0] != "-o" or args[2] != "-m":
        sys.exit("usage: python -m bench.cpuprofile -o OUT -m MODULE [ARGS...]")
    out, module = args[1], args[3]
    sys.argv = [module, *args[4:]]
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _exit)
    profiler = cProfile.Profile(time.process_time)
    profiler.enable()
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    finally:
        profiler.disable()
        profiler.dump_stats(out)


if __name__ == "__main__":
    main()
