"""Where snapshots come from: a git work tree (watched) or a plain directory.

A commit becomes a snapshot only when it loads without a single error; the
outcome of every attempt is kept in `RepoStatus` for the status API, the CLI
and the logs. A broken commit never replaces the snapshot being served.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gitctl import snapshot as snapshots
from gitctl.gitrun import resolve
from gitctl.snapshot import Snapshot
from server.sources.gitwatch import RefWatch

if TYPE_CHECKING:
    from server.sources.history import History
    from server.sources.rollout import RolloutStatus

__all__ = ["Checked", "RepoStatus", "SnapshotRepo", "check_result", "watch_repo"]


@dataclass(frozen=True, slots=True)
class Rejection:
    revision: str
    at: datetime
    errors: tuple[str, ...]


@dataclass(slots=True)
class RepoStatus:
    serving: str | None = None
    serving_since: datetime | None = None
    rejected: Rejection | None = None
    signer: str | None = None  # who signed the served commit, when signatures are required
    journal: History | None = None  # every served and rejected commit, across restarts
    rollout: RolloutStatus | None = None  # the last canary rollout (settings.yaml rollout)

    def to_json(self) -> dict[str, Any]:
        return {
            "serving": self.serving,
            "serving_since": self.serving_since.isoformat() if self.serving_since else None,
            "signer": self.signer,
            "rollout": self.rollout.to_json() if self.rollout is not None else None,
            "rejected": None
            if self.rejected is None
            else {
                "revision": self.rejected.revision,
                "at": self.rejected.at.isoformat(),
                "errors": list(self.rejected.errors),
            },
        }


class SnapshotRepo:
    def __init__(self, path: Path, *, branch: str | None = None) -> None:
        self.path = path
        self.branch = branch
        self.is_git = (path / ".git").exists()

    @property
    def git_dir(self) -> Path:
        return self.path / ".git"

    def head(self) -> str | None:
        """The revision to serve now (a commit sha), or None for a plain directory."""
        if not self.is_git:
            return None
        return resolve(self.path, self.branch or "HEAD")

    def check(
        self, revision: str | None, now: datetime | None = None, *, schemas_passed: bool = False
    ) -> Checked:
        """`now`: the time at which `expires` entries count (gitctl fails a
        policy with expiry times closed without one). `schemas_passed`: this
        commit passed the current schemas before (server/sources/passed.py)."""
        if revision is None:
            folder = self.path / "tailnet.d"
            # The packaged example is the tailnet.d folder itself.
            result = snapshots.load_from_directory(
                folder if folder.is_dir() else self.path, now=now
            )
        else:
            result = snapshots.load_from_git(
                self.path, revision, now=now, schemas_passed=schemas_passed
            )
        return check_result(result)


@dataclass(frozen=True, slots=True)
class Checked:
    """A commit read and checked: its snapshot, or the errors and the first
    stage that failed (a `tailnetd_snapshot_rejections` reason)."""

    snapshot: Snapshot | None
    errors: tuple[str, ...]
    reason: str | None = None


def check_result(result: Any) -> Checked:
    """A gitctl LoadResult: no snapshot if any error."""
    from gitctl.diagnostics import Severity

    errors = tuple(d.render() for d in result.diagnostics if d.severity is Severity.ERROR)
    if not errors:
        return Checked(result.snapshot, ())
    return Checked(None, errors, getattr(result, "failed_stage", None) or "schema")


# A HEAD that could not be read (a ref half written, packed-refs being
# rewritten) is read again after this, doubling, while no write says to;
# past RETRY_LONGEST the slow poll is left to find it.
RETRY_SECONDS = 0.02
RETRY_LONGEST = 2.0


async def watch_repo(
    repo: SnapshotRepo,
    on_revision: Callable[[str], Awaitable[None]],
    *,
    log: logging.Logger,
    poll_interval: float = 30.0,
) -> None:
    """Call on_revision(sha) whenever the served branch moves.

    inotify on the refs (server/sources/gitwatch.py; watchfiles on .git where
    there is none) notices commits, checkouts and fetches at once; the slow
    poll is a safety net for file systems where inotify says nothing.
    """
    last = repo.head()
    stop = asyncio.Event()

    async def check() -> bool:
        """False: HEAD could not be read (worth another look soon)."""
        nonlocal last
        try:
            current = await asyncio.to_thread(repo.head)
        except Exception as exc:  # a half-written ref during a commit: try again
            log.debug("repo: reading HEAD failed: %s", exc)
            return False
        if current is None:
            return last is None  # the branch vanished mid-write, or was never there
        if current != last:
            last = current
            try:
                await on_revision(current)
            except Exception:  # the watcher must outlive any one bad commit
                log.exception("repo: handling commit %s failed", current[:12])
        return True

    async def poll() -> None:
        while not stop.is_set():
            await asyncio.sleep(poll_interval)
            await check()

    poller = asyncio.create_task(poll())
    try:
        watch = RefWatch.open(repo.git_dir)
        if watch is None:
            await _watch_with_watchfiles(repo, check)
            return
        try:
            await _follow(watch, check)
        finally:
            watch.close()
    finally:
        stop.set()
        poller.cancel()


async def _follow(watch: RefWatch, check: Callable[[], Awaitable[bool]]) -> None:
    retry: float | None = None
    while True:
        if retry is None:
            await watch.changed.wait()
        else:
            try:
                await asyncio.wait_for(watch.changed.wait(), retry)
            except TimeoutError:
                pass
        watch.changed.clear()  # writes from here on ask for another look
        if await check():
            retry = None
        else:
            retry = RETRY_SECONDS if retry is None else retry * 2
            retry = None if retry > RETRY_LONGEST else retry


async def _watch_with_watchfiles(repo: SnapshotRepo, check: Callable[[], Awaitable[bool]]) -> None:
    import watchfiles

    # watch_filter=None: the default filter drops every path inside .git/.
    async for _changes in watchfiles.awatch(
        repo.git_dir, watch_filter=None, debounce=200, step=50, recursive=True
    ):
        await check()
