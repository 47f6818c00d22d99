"""A `tailnetd serve` subprocess on loopback for the load generator to aim at:
a temp data dir, a git repo of `tailnet.d/` files, reusable pre-auth keys, and
the server's own resource use read from /proc (RSS, CPU seconds).

Built on tests/e2e/harness.py (ServerProcess, TailnetRepo), so the benchmarks
start the server exactly as the end-to-end tests do.
"""

from __future__ import annotations

import os
import signal
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.loadgen.client import ServerAddress
from tests.e2e.harness import ServerProcess, TailnetRepo

__all__ = [
    "LocalServer",
    "local_server",
    "minor_faults",
    "process_cpu_seconds",
    "softirq_cpu_seconds",
    "thread_cpu_seconds",
]

_TICKS = os.sysconf("SC_CLK_TCK")


def thread_cpu_seconds(pid: int) -> dict[int, float]:
    """CPU seconds of each of process `pid`'s threads (schedstat), by thread
    id: the event loop's (the id `pid`) apart from the workers' (a commit
    compiles in one)."""
    out: dict[int, float] = {}
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except FileNotFoundError:
        return out
    for task in tasks:
        try:
            out[int(task.name)] = int((task / "schedstat").read_text().split()[0]) / 1e9
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue
    return out


def softirq_cpu_seconds() -> float:
    """CPU seconds of the kernel's softirq threads (ksoftirqd/N), the whole
    machine's: loopback receive work deferred there is not the sender's."""
    total = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if not (proc / "comm").read_text().startswith("ksoftirqd/"):
                continue
            total += int((proc / "schedstat").read_text().split()[0])
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue
    return total / 1e9


def minor_faults(pid: int) -> int:
    """Page faults served without I/O in process `pid` so far: pages the
    heap trim gave back and the next burst touches again are among them."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[7])


def process_cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of process `pid`'s threads, to the
    nanosecond: the first field of each thread's /proc/PID/task/TID/schedstat.
    /proc/PID/stat's utime + stime come in 10 ms clock ticks, coarser than
    what one endpoint change costs the server (a few ms), so per-change sums
    of them swung by a tick each. A thread that has ended takes its time
    with it; the server's threads are its executor's, which stay. Without
    schedstat (a kernel built without it): utime + stime."""
    total, found = 0, False
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except FileNotFoundError:
        tasks = []
    for task in tasks:
        try:
            total += int((task / "schedstat").read_text().split()[0])
            found = True
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue  # the thread ended meanwhile (or no schedstat)
    if found:
        return total / 1e9
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime + stime


SODIUM = "/nacl/_sodium"  # the path of libsodium's binding, in /proc/PID/maps
SETTLE_TAIL = 0.3  # seconds the settle takes after that import (~10 ms unloaded)


@dataclass
class LocalServer:
    process: ServerProcess
    repo: TailnetRepo
    tmp: Path
    started_in: float = 0.0  # seconds from exec to /health answering
    stopped_in: float = 0.0  # seconds from SIGTERM to exit, at the last restart

    @property
    def address(self) -> ServerAddress:
        return ServerAddress.loopback(self.process.port)

    @property
    def pid(self) -> int:
        assert self.process.proc is not None
        return self.process.proc.pid

    def key(self, user: str) -> str:
        return self.process.create_key(user, "--reusable")

    def commit(self, files: dict[str, str | None], message: str) -> None:
        self.repo.commit(files, message)

    def rss_bytes(self) -> int:
        return self._status_bytes("VmRSS")

    def anon_rss_bytes(self) -> int:
        """The anonymous part of the RSS: the heap and mmapped memory, without
        the shared libraries' code pages that a first use faults in (zstd's,
        cryptography's, libsodium's: ~0.7 MB on the first registrations)."""
        return self._status_bytes("RssAnon")

    def _status_bytes(self, field: str) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"no {field} in /proc status")

    def cpu_seconds(self) -> float:
        return process_cpu_seconds(self.pid)

    def settled(self, timeout: float = 10.0) -> bool:
        """Until the server's start-up settle (server/cli.py `_settle`, 1 s
        after start: imports, a full collection, the heap trim's floor) is
        done; False if not seen in `timeout`. It grows the RSS by ~8 MB, ~1 MB
        of it after the first /key: a run that starts registering sooner (a
        quiet machine) counted that as ~10 KiB of every node at mesh 100.
        The sign: libsodium's binding, its second import, is mapped."""
        deadline = time.monotonic() + timeout
        while SODIUM not in Path(f"/proc/{self.pid}/maps").read_text():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        time.sleep(SETTLE_TAIL)
        return True

    def memory_snapshot(self, directory: Path, timeout: float = 120.0) -> Path:
        """Ask a server started with TAILNETD_TRACEMALLOC=`directory` for its
        next tracemalloc snapshot (SIGUSR2); the snapshot's base path once written."""
        taken = len(list(directory.glob("snap-*.txt")))
        target = directory / f"snap-{taken}.txt"
        os.kill(self.pid, signal.SIGUSR2)
        deadline = time.monotonic() + timeout
        while not target.exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {target} after {timeout} s")
            time.sleep(0.1)
        return target.with_suffix("")

    def restart(self, launcher: list[str] | None = None) -> float:
        """Stop (SIGTERM) and start again on the same data dir, with `launcher`
        (by default none: a profile covers the first run); seconds to serving."""
        begin = time.monotonic()
        self.process.stop()
        self.stopped_in = time.monotonic() - begin
        self.process.launcher = list(launcher or ())
        return self.start()

    def start(self) -> float:
        begin = time.monotonic()
        self.process.start()
        self.started_in = time.monotonic() - begin
        return self.started_in


@contextmanager
def local_server(
    files: dict[str, str],
    *,
    launcher: list[str] | None = None,
    env: dict[str, str] | None = None,
) -> Iterator[LocalServer]:
    """A started server serving a fresh repo of `files`; stopped on exit.

    `launcher` goes between the interpreter and `-m server.cli`, e.g.
    `["-m", "cProfile", "-o", "serve.prof"]` to profile the server.
    """
    # The admin unix socket lives in the data dir; AF_UNIX paths are short.
    with tempfile.TemporaryDirectory(prefix="tnd-lg-") as tmp_name:
        tmp = Path(tmp_name)
        repo = TailnetRepo(tmp / "repo", files)
        process = ServerProcess(repo.path, tmp / "data", tmp / "server.log")
        process.launcher = list(launcher or ())
        process.extra_env.update(env or {})
        server = LocalServer(process, repo, tmp)
        server.start()
        try:
            yield server
        finally:
            process.stop()
