"""A remote repository is cloned into the data dir and followed by fetching."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import git
import pytest

from server.sources.remote import RemoteRepo, is_remote, watch_remote
from tests.e2e.harness import TailnetRepo

USERS = "users:\n  - {name: alice, email: alice@example.com}\n"


def test_urls_and_scp_forms_are_remote_paths_are_not() -> None:
    assert is_remote("https://git.example/tailnet.git")
    assert is_remote("git@github.example:org/tailnet.git")
    assert is_remote("file:///srv/tailnet.git")
    assert not is_remote("/srv/tailnet")
    assert not is_remote("tailnet")


def test_clone_then_fetch_follows_the_branch(tmp_path: Path) -> None:
    upstream = TailnetRepo(tmp_path / "upstream", {"users.yaml": USERS})
    remote = RemoteRepo(f"file://{upstream.path}", tmp_path / "data", branch="main")
    first = remote.sync()
    assert first == upstream.head()
    checked = remote.check(first)
    snap, errors = checked.snapshot, checked.errors
    assert errors == () and snap is not None and [u.name for u in snap.users] == ["alice"]

    second = upstream.commit(
        {"users.yaml": USERS + "  - {name: bob, email: bob@example.com}\n"}, "bob"
    )
    assert remote.head() == first  # nothing changes until the next fetch
    assert remote.sync() == second
    snap = remote.check(second).snapshot
    assert snap is not None and {u.name for u in snap.users} == {"alice", "bob"}


def test_a_failed_fetch_is_reported_and_keeps_the_last_revision(tmp_path: Path) -> None:
    upstream = TailnetRepo(tmp_path / "upstream", {"users.yaml": USERS})
    remote = RemoteRepo(f"file://{upstream.path}", tmp_path / "data")
    served = remote.sync()
    remote.url = f"file://{tmp_path}/missing"
    with pytest.raises(git.GitCommandError):
        remote.sync()
    assert remote.last_fetch_error
    assert remote.head() == served


def test_watch_fetches_when_woken(tmp_path: Path) -> None:
    upstream = TailnetRepo(tmp_path / "upstream", {"users.yaml": USERS})
    remote = RemoteRepo(f"file://{upstream.path}", tmp_path / "data")
    remote.sync()
    seen: list[str] = []

    async def run() -> None:
        wake = asyncio.Event()

        async def on_revision(rev: str) -> None:
            seen.append(rev)

        task = asyncio.create_task(
            watch_remote(
                remote, on_revision, log=logging.getLogger("test"), interval=3600, wake=wake
            )
        )
        sha = await asyncio.to_thread(upstream.commit, {"users.yaml": USERS + "# changed\n"}, "c2")
        wake.set()
        for _ in range(100):
            if seen:
                break
            await asyncio.sleep(0.05)
        task.cancel()
        assert seen == [sha]

    asyncio.run(run())
