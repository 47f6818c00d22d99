"""The server's CPU as the socket benches read it (bench/loadgen/local.py):
every live thread's time on CPU, finer than /proc's 10 ms clock ticks."""

from __future__ import annotations

import subprocess
import sys
import textwrap

# A fresh process burns CPU on two threads and compares what the bench reads
# with its own CPU clock (both CPU time: nothing here depends on the wall).
_CHILD = textwrap.dedent(
    """
    import os, threading, time
    from bench.loadgen.local import process_cpu_seconds

    def burn():
        end = time.thread_time() + 0.05
        while time.thread_time() < end:
            pass

    burned, done = threading.Event(), threading.Event()

    def work():
        burn()
        burned.set()
        done.wait()  # alive at the second read

    before = process_cpu_seconds(os.getpid())
    worker = threading.Thread(target=work)
    worker.start()
    burn()
    burned.wait()
    after = process_cpu_seconds(os.getpid())
    own = time.process_time()
    done.set()
    worker.join()
    print(before, after, own)
    """
)


def test_server_cpu_counts_every_thread_finer_than_a_clock_tick() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD], capture_output=True, text=True, check=True
    ).stdout.split()
    before, after, own = map(float, out)
    assert 0.1 <= after - before <= own  # both threads' burns, no more than the process had
    assert after != round(after, 2)  # nanoseconds, not 10 ms ticks
