"""The local repository watcher: a commit reaches the server within
milliseconds, a burst of ref writes is one look at the final HEAD, and a HEAD
that could not be read is read again without waiting for another write."""

from __future__ import annotations

import asyncio
import logging
import os
import struct
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from server.sources import repo as repo_module
from server.sources.gitwatch import QUIET_SECONDS, Settle, parse_events
from server.sources.repo import SnapshotRepo, watch_repo

LOG = logging.getLogger("test")


def git(path: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
    }
    done = subprocess.run(["git", "-C", str(path), *args], capture_output=True, check=True, env=env)
    return done.stdout.decode().strip()


@pytest.fixture
def work(tmp_path: Path) -> Path:
    git(tmp_path, "init", "-q", "-b", "main")
    git(tmp_path, "commit", "-q", "--allow-empty", "-m", "first")
    return tmp_path


def loose_commits(path: Path, count: int) -> list[str]:
    """Commits on top of HEAD that no ref names yet."""
    parent, made = git(path, "rev-parse", "HEAD"), []
    tree = git(path, "rev-parse", "HEAD^{tree}")
    for n in range(count):
        parent = git(path, "commit-tree", tree, "-p", parent, "-m", f"c{n}")
        made.append(parent)
    return made


def move_ref(path: Path, sha: str) -> None:
    """As git moves a branch: write a lock file, rename it into place."""
    ref = path / ".git" / "refs" / "heads" / "main"
    lock = ref.with_name("main.lock")
    lock.write_text(sha + "\n")
    lock.rename(ref)


async def watching(
    repo: SnapshotRepo, body: Callable[[list[tuple[float, str]]], Awaitable[None]]
) -> list[tuple[float, str]]:
    seen: list[tuple[float, str]] = []

    async def on_revision(sha: str) -> None:
        seen.append((time.monotonic(), sha))

    task = asyncio.create_task(watch_repo(repo, on_revision, log=LOG))
    await asyncio.sleep(0.05)  # the watches are in place
    try:
        await body(seen)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return seen


async def until(seen: list[tuple[float, str]], count: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while len(seen) < count and time.monotonic() < deadline:
        await asyncio.sleep(0.002)


def test_a_commit_is_seen_within_milliseconds(work: Path) -> None:
    # watchfiles (step=50) could not report one sooner than 50 ms after git wrote it.
    delays: list[float] = []

    async def body(seen: list[tuple[float, str]]) -> None:
        for n, sha in enumerate(loose_commits(work, 3)):
            start = time.monotonic()
            move_ref(work, sha)
            await until(seen, n + 1)
            assert seen[-1][1] == sha
            delays.append(seen[-1][0] - start)
            await asyncio.sleep(0.05)

    asyncio.run(watching(SnapshotRepo(work), body))
    assert min(delays) < 0.045, delays


def test_a_real_git_commit_is_one_revision(work: Path) -> None:
    async def body(seen: list[tuple[float, str]]) -> None:
        (work / "f").write_text("x")
        await asyncio.to_thread(git, work, "add", "f")
        await asyncio.to_thread(git, work, "commit", "-q", "-m", "second")
        await until(seen, 1)
        await asyncio.sleep(QUIET_SECONDS * 10)

    seen = asyncio.run(watching(SnapshotRepo(work), body))
    assert [sha for _, sha in seen] == [git(work, "rev-parse", "HEAD")]


def test_a_burst_of_ref_writes_is_one_look_at_the_final_head(work: Path) -> None:
    commits = loose_commits(work, 5)

    async def body(seen: list[tuple[float, str]]) -> None:
        for sha in commits:
            move_ref(work, sha)  # each within the quiet window of the one before
        await until(seen, 1)
        await asyncio.sleep(QUIET_SECONDS * 10)

    seen = asyncio.run(watching(SnapshotRepo(work), body))
    assert [sha for _, sha in seen] == [commits[-1]]


class HalfWritten(SnapshotRepo):
    """Reading HEAD fails `failures` times after the first read (a ref caught
    mid-write), then works."""

    def __init__(self, path: Path, failures: int) -> None:
        super().__init__(path)
        self.reads, self.failures = 0, failures

    def head(self) -> str | None:
        self.reads += 1
        if 1 < self.reads <= 1 + self.failures:
            raise RuntimeError("fatal: bad object")
        return super().head()


def test_a_head_that_could_not_be_read_is_read_again_without_another_write(
    work: Path,
) -> None:
    (sha,) = loose_commits(work, 1)
    repo = HalfWritten(work, failures=2)

    async def body(seen: list[tuple[float, str]]) -> None:
        move_ref(work, sha)  # the only write: the retry must not wait for another
        await until(seen, 1, timeout=2.0)

    seen = asyncio.run(watching(repo, body))
    assert [s for _, s in seen] == [sha]
    assert repo.reads == 4


def test_without_inotify_watchfiles_still_reports_commits(
    work: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(repo_module.RefWatch, "open", classmethod(lambda cls, _d: None))
    (sha,) = loose_commits(work, 1)

    async def body(seen: list[tuple[float, str]]) -> None:
        await asyncio.sleep(0.2)  # watchfiles starts its thread
        move_ref(work, sha)
        await until(seen, 1)

    seen = asyncio.run(watching(SnapshotRepo(work), body))
    assert [s for _, s in seen] == [sha]


# The timing rule alone, on a fake clock.


def test_a_lock_file_alone_does_not_ask_for_a_look() -> None:
    settle = Settle(quiet=0.01, longest=0.2)
    settle.event(1.0, moves_a_ref=False)
    assert settle.get_timer() is None


def test_the_look_waits_for_quiet_but_not_longer_than_the_longest() -> None:
    settle = Settle(quiet=0.01, longest=0.2)
    settle.event(1.0, moves_a_ref=True)
    assert settle.get_timer() == pytest.approx(1.01)
    settle.event(1.005, moves_a_ref=False)  # the rest of the same command
    assert settle.get_timer() == pytest.approx(1.015)
    assert not settle.handle_timer(1.012)
    for n in range(40):  # writes that never stop
        settle.event(1.0 + n * 0.009, moves_a_ref=True)
    assert settle.get_timer() == pytest.approx(1.2)
    assert settle.handle_timer(1.2)
    assert settle.get_timer() is None


def test_inotify_events_are_parsed_with_their_padding() -> None:
    def event(wd: int, mask: int, name: bytes) -> bytes:
        padded = name + b"\0" * (16 - len(name)) if name else b""
        return struct.pack("iIII", wd, mask, 0, len(padded)) + padded

    data = event(1, 0x80, b"main") + event(2, 0x100, b"main.lock") + event(3, 0x4000, b"")
    events = list(parse_events(data))
    assert [(e.wd, e.name) for e in events] == [(1, "main"), (2, "main.lock"), (3, "")]
    assert [e.moves_a_ref for e in events] == [True, False, True]
