"""The server's CPU as the socket benches read it (bench/loadgen/local.py):
every live thread's time on CPU, finer than /proc's 10 ms clock ticks; and
the wait, before a storm, for the server's start-up work to end."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

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


class _FakeServer:
    """A server's CPU seconds on a fake clock: busy (a tenth of each second of
    `busy`) until `busy_until`, idle after."""

    def __init__(self, busy_until: float) -> None:
        self.now = 0.0
        self.busy_until = busy_until

    def cpu(self) -> float:
        return min(self.now, self.busy_until) * 0.1

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_a_storm_waits_for_the_server_start_up_work_to_end() -> None:
    from bench.loadgen.local import SETTLE_AFTER, wait_quiet

    server = _FakeServer(busy_until=SETTLE_AFTER + 0.55)
    waited = wait_quiet(server.cpu, since=0.2, clock=lambda: server.now, sleep=server.sleep)
    assert server.now >= SETTLE_AFTER + 0.55  # past the start-up work, however late it ends
    assert waited == server.now
    assert server.now <= SETTLE_AFTER + 0.55 + 0.2  # and not much longer


def test_a_server_that_never_goes_quiet_is_waited_for_no_longer_than_the_timeout() -> None:
    from bench.loadgen.local import wait_quiet

    server = _FakeServer(busy_until=1e9)
    assert wait_quiet(
        server.cpu, since=0.0, timeout=5.0, clock=lambda: server.now, sleep=server.sleep
    ) == pytest.approx(5.0, abs=0.11)


def test_the_wait_counts_from_the_server_s_first_answer_not_its_exec(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The start-up work's timer starts with the server's loop, after its
    imports: counted from the exec, the wait ended before the work began."""
    from bench.loadgen import local

    seen: dict[str, float] = {}

    def wait_quiet(cpu: object, *, since: float) -> float:
        seen["since"] = since
        return 0.0

    monkeypatch.setattr(local, "wait_quiet", wait_quiet)
    server = local.LocalServer(process=None, repo=None, tmp=Path("."))  # type: ignore[arg-type]
    server.started_at, server.started_in = 100.0, 0.6
    server.wait_settled()
    assert seen["since"] == pytest.approx(100.6)
