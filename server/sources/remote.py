"""A remote git repository as the source of snapshots: cloned (bare) into the
data dir, fetched on an interval and on demand (POST /api/v1/repo/sync).

The served revision is the tip of one branch as last fetched. Fetching is
blocking git work, so it runs in a thread; a fetch that fails (network,
credentials) is logged and the current snapshot keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path

from gitctl import snapshot as snapshots
from gitctl.gitrun import resolve
from server.sources.repo import Checked, check_result

__all__ = ["RemoteRepo", "is_remote", "watch_remote"]

_SCP_LIKE = re.compile(r"^[\w.-]+@[\w.-]+:")


def is_remote(text: str) -> bool:
    """URLs (https://, ssh://, file://, git://) and scp-like user@host:path."""
    return "://" in text or bool(_SCP_LIKE.match(text))


class RemoteRepo:
    is_git = True

    def __init__(self, url: str, data_dir: Path, *, branch: str | None = None) -> None:
        self.url = url
        self.path = data_dir / "repo.git"
        self.branch = branch
        self.last_fetch_error: str | None = None

    @property
    def git_dir(self) -> Path:
        return self.path

    def sync(self) -> str | None:
        """Fetch the remote; return the served branch's tip (None if it has none)."""
        import git  # gitpython: only a server that serves a remote loads it

        try:
            if not (self.path / "HEAD").exists():
                self.path.parent.mkdir(parents=True, exist_ok=True)
                git.Repo.clone_from(self.url, self.path, bare=True).close()
            # A bare clone maps the remote's branches onto its own; force-update so a
            # rewritten branch is followed like any other new commit.
            git.Git(self.path).fetch(self.url, "+refs/heads/*:refs/heads/*", "--prune")
            self.last_fetch_error = None
        except git.GitCommandError as exc:
            self.last_fetch_error = (exc.stderr or str(exc)).strip()
            raise
        return self.head()

    def head(self) -> str | None:
        if not (self.path / "HEAD").exists():
            return None
        return resolve(self.path, f"refs/heads/{self.branch}" if self.branch else "HEAD")

    def check(
        self, revision: str | None, now: datetime | None = None, *, schemas_passed: bool = False
    ) -> Checked:
        """`now`: the time at which `expires` entries count (gitctl fails a
        policy with expiry times closed without one). `schemas_passed`: this
        commit passed the current schemas before (server/sources/passed.py)."""
        if revision is None:
            message = f"{self.url}: no commit on branch {self.branch or 'HEAD'}"
            return Checked(None, (message,), "source")
        return check_result(
            snapshots.load_from_git(self.path, revision, now=now, schemas_passed=schemas_passed)
        )


async def watch_remote(
    repo: RemoteRepo,
    on_revision: Callable[[str], Awaitable[None]],
    *,
    log: logging.Logger,
    interval: float,
    wake: asyncio.Event,
) -> None:
    """Fetch every `interval` seconds, or at once when `wake` is set."""
    import git

    last = repo.head()
    while True:
        try:
            await asyncio.wait_for(wake.wait(), interval)
        except TimeoutError:
            pass
        wake.clear()
        try:
            current = await asyncio.to_thread(repo.sync)
        except git.GitCommandError:
            log.warning("repo: fetching %s failed: %s", repo.url, repo.last_fetch_error)
            continue
        if current is not None and current != last:
            last = current
            try:
                await on_revision(current)
            except Exception:
                log.exception("repo: handling commit %s failed", current[:12])
