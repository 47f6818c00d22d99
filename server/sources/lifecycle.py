"""The commit lifecycle: which commit is served, and what happens to each new one.

A reported revision is read and checked off the event loop (schemas, the
policy, its tests, the signature when signers are trusted); a commit that
passes is handed to `serve` (the running tailnet swaps it in), one that fails —
or that `serve` cannot compile for the live nodes — is refused: logged,
counted, kept in the status and the history, and the last good commit keeps
serving, across restarts too (`last_good_revision` in the data dir).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from gitctl.gitrun import GitError, NotARepository
from gitctl.snapshot import Snapshot
from gitctl.sources import Documents, read_directory, read_git
from server.datadir import write_private
from server.logs import event
from server.metrics import Metrics
from server.sources.authority import CommitAuthority
from server.sources.history import History, HistoryEntry
from server.sources.passed import SchemaPassed
from server.sources.remote import RemoteRepo, watch_remote
from server.sources.repo import Checked, Rejection, RepoStatus, SnapshotRepo, watch_repo
from server.sources.rollout import ABORTED, Hold, RolloutError

__all__ = ["CommitLifecycle", "RolloutError", "SourceError", "open_repo"]

LAST_GOOD_FILE = "last_good_revision"
RESTARTED = "the server restarted before this commit reached every node: its hold started again"


class SourceError(Exception):
    """The repository cannot be read at start-up; the message is one line for people."""


async def open_repo(
    *,
    repo: Path,
    repo_url: str | None,
    data_dir: Path,
    branch: str | None,
    log: logging.Logger,
    trusted_signers: Path | None = None,
) -> SnapshotRepo | RemoteRepo:
    """The work tree, or the remote cloned (or fetched) into the data dir.
    Signatures (`trusted_signers`) can only be checked in a git repository."""
    if repo_url is None:
        if not repo.is_dir():
            reason = "no such directory" if not repo.exists() else "not a directory"
            raise SourceError(f"cannot read the repository {repo}: {reason}")
        work_tree = SnapshotRepo(repo, branch=branch)
        if trusted_signers is not None and not work_tree.is_git:
            raise SourceError(
                f"--trusted-signers needs a git repository; {repo} is a plain directory"
            )
        return work_tree
    remote = RemoteRepo(repo_url, data_dir, branch=branch)
    try:
        await asyncio.to_thread(remote.sync)
    except Exception as exc:
        if remote.head() is None:
            raise SourceError(
                f"cannot clone {repo_url}: {remote.last_fetch_error or exc}"
            ) from None
        log.warning("fetching %s failed, serving the last fetched commit: %s", repo_url, exc)
    return remote


class CommitLifecycle:
    def __init__(
        self,
        repo: SnapshotRepo | RemoteRepo,
        *,
        authority: CommitAuthority,
        history: History,
        status: RepoStatus,
        data_dir: Path,
        clock: Callable[[], datetime],
        log: logging.Logger,
        metrics: Metrics,
        on_outcome: Callable[[Literal["served", "rejected"], str, Sequence[str]], None],
    ) -> None:
        self.repo = repo
        self._on_outcome = on_outcome  # webhooks: snapshot.served / snapshot.rejected
        self.authority = authority
        self.history = history
        self.status = status
        self._last_good = data_dir / LAST_GOOD_FILE
        self._schema_passed = SchemaPassed(data_dir)
        self._clock = clock
        self._log = log
        self._metrics = metrics
        self._lock = asyncio.Lock()
        self.sync_wake = asyncio.Event()
        # Set once the tailnet runs: swaps a checked snapshot in, or raises.
        self._serve: Callable[[Snapshot], None] | None = None
        self._serve_off_loop: Callable[[Snapshot], Awaitable[None]] | None = None
        # Canary rollout (rollout.py): serve a candidate to the canary tag's
        # nodes, and end that; the hold in progress; the snapshot served to all.
        self._start_canary: Callable[[Snapshot, str], None] | None = None
        self._end_canary: Callable[[], None] = lambda: None
        self._canary_online: Callable[[str], bool] = lambda _tag: False
        self._hold: Hold | None = None
        self._restarted: Hold | None = None  # a tip held back at start-up, to hold again
        self._current: Snapshot | None = None
        self.rollout_wake = asyncio.Event()  # a hold began or ended: its timer looks again

    # Start-up

    def initial(self) -> Snapshot:
        """The snapshot to start with: HEAD, or the last good commit when HEAD
        is refused. SourceError when there is none."""
        try:
            return self._initial()
        except (OSError, GitError) as exc:
            reason = (
                "its .git is not a readable git repository"
                if isinstance(exc, NotARepository)
                else str(exc).strip().splitlines()[0]
            )
            raise SourceError(f"cannot read the repository {self.repo.path}: {reason}") from None

    def _initial(self) -> Snapshot:
        head = self.repo.head()
        checked = self._check_again(head)
        previous = self._last_good.read_text().strip() if self._last_good.exists() else None
        signer = self.history.signer_of(head) if head is not None else None
        if previous and self.authority.needs_previous:
            # The trust chain goes on across restarts: a new HEAD is checked against
            # the list of the commit served last.
            # (On a plain restart that is HEAD, just checked: not read twice.)
            last = checked if previous == head else self._check_again(previous)
            self.authority.serving(previous, last.snapshot)
        # A commit served before was checked then (an outside list is checked always).
        if head is not None and (head != previous or self.authority.outside):
            checked, signer = self._verified(head, checked)
        snap, errors = checked.snapshot, checked.errors
        if snap is None:
            self._reject(head or str(self.repo.path), checked)
        elif head is not None and previous and head != previous:
            kept = self._kept_back(head, snap, signer, previous)
            if kept is not None:
                checked, signer = kept
                snap, errors = checked.snapshot, checked.errors
        if snap is None:
            if previous and previous != head:
                self._log.warning(
                    "HEAD %s is refused; serving the last good commit %s", head, previous
                )
                checked, signer = self._last_good_checked(previous)
                snap, errors = checked.snapshot, checked.errors
            if snap is None:
                raise SourceError(
                    "no valid tailnet.d to serve:\n" + "\n".join(f"  {e}" for e in errors)
                )
        self._serving(snap, signer)
        return snap

    def _check_again(self, revision: str | None) -> Checked:
        """A start-up check: the schemas are skipped for the commit that passed them last."""
        passed = self._schema_passed.passed(revision)
        return self.repo.check(revision, self._clock(), schemas_passed=passed)

    def _last_good_checked(self, previous: str) -> tuple[Checked, str | None]:
        checked = self._check_again(previous)
        signer = self.history.signer_of(previous)
        if self.authority.outside:
            checked, signer = self._verified(previous, checked)
        return checked, signer

    def _kept_back(
        self, head: str, snap: Snapshot, signer: str | None, previous: str
    ) -> tuple[Checked, str | None] | None:
        """At start-up, a checked tip that is not the last good commit: the
        last good one (checked) serves everyone instead when the tip's canary
        rollout was aborted, or when the last good commit's settings roll out
        through canaries and the tip was never promoted (its hold starts
        again once the canaries can be served). None: the tip serves everyone."""
        decided = self.history.latest(head)
        if decided is not None and decided.outcome == "served":
            return None  # promoted before the restart
        good = self._last_good_checked(previous)
        last = good[0].snapshot
        if last is None:
            return None
        if decided is not None and any(r.startswith(ABORTED) for r in decided.reasons):
            self.status.rejected = Rejection(head, decided.at, decided.reasons)
            self._log.warning(
                "HEAD %s stays refused (its canary rollout was aborted); serving %s",
                head[:12],
                previous[:12],
            )
            return good
        rollout = last.settings.rollout
        if rollout is None:
            return None
        self._restarted = Hold.start(
            snap, signer, rollout.canary, rollout.hold, self._clock(),
            canary_online=False, note=RESTARTED,
        )  # fmt: skip
        self._log.warning(
            "HEAD %s was not yet served to every node: serving %s, and %s holds it again",
            head[:12],
            previous[:12],
            rollout.canary,
        )
        return good

    def serve_with(
        self,
        serve: Callable[[Snapshot], None],
        *,
        off_loop: Callable[[Snapshot], Awaitable[None]] | None = None,
    ) -> None:
        """From now on, a checked commit is served by `serve` (which raises
        when it cannot compile the commit for the live nodes), or by
        `off_loop` where the lifecycle can wait (it compiles in a worker thread)."""
        self._serve = serve
        self._serve_off_loop = off_loop

    def canary_with(
        self,
        start: Callable[[Snapshot, str], None],
        end: Callable[[], None],
        *,
        online: Callable[[str], bool],
    ) -> None:
        """With settings.yaml's `rollout`, a checked commit is first served by
        `start(snapshot, canary tag)` (which raises when it cannot compile),
        and `end()` sends the canaries back when the rollout is aborted;
        `online(tag)` says whether a canary node is online. A tip held back at
        start-up is held on the canaries now (its hold starts again)."""
        self._start_canary, self._end_canary, self._canary_online = start, end, online
        restarted, self._restarted = self._restarted, None
        if restarted is not None:
            self._hold_on_canaries(
                restarted.snapshot, restarted.signer, restarted.canary, restarted.hold,
                note=restarted.note,
            )  # fmt: skip

    def watcher(self, fetch_interval: float) -> Any:
        """The coroutine that watches the repository, or None for a plain directory."""
        if isinstance(self.repo, RemoteRepo):
            return watch_remote(
                self.repo,
                self.on_revision,
                log=self._log,
                interval=fetch_interval,
                wake=self.sync_wake,
            )
        if self.repo.is_git:
            return watch_repo(self.repo, self.on_revision, log=self._log)
        return None

    # New commits

    async def sync_now(self) -> None:
        """POST /api/v1/repo/sync: look at the repository now instead of waiting."""
        if isinstance(self.repo, RemoteRepo):
            try:
                head = await asyncio.to_thread(self.repo.sync)
            except Exception:
                self._log.warning(
                    "repo: fetching %s failed: %s", self.repo.url, self.repo.last_fetch_error
                )
                return
        else:
            head = await asyncio.to_thread(self.repo.head)
        if head is not None:
            await self.on_revision(head)

    async def on_revision(self, revision: str) -> None:
        """The branch moved (to `revision`, or further since).

        The watcher, its poll and sync requests all report revisions, and a
        report can arrive after a newer one: each is handled in turn, as a
        nudge to serve the branch tip as it is now, so an older commit is
        never served after a newer one."""
        async with self._lock:
            head = await asyncio.to_thread(self.repo.head)
            await self._take(head or revision)

    async def _take(self, revision: str) -> None:
        held = self._hold.snapshot.id if self._hold is not None else None
        if revision in (self.status.serving, self._last_rejected(), held):
            return  # already decided (a watcher and a sync request can both see it)
        # Reading and checking a commit is blocking git and CPU work: keep it off the loop.
        checked = await asyncio.to_thread(self.repo.check, revision, self._clock())
        checked, signer = await asyncio.to_thread(self._verified, revision, checked)
        snap = checked.snapshot
        if snap is None:
            self._reject(revision, checked)
            return
        assert self._serve is not None, "serve_with() before the watcher starts"
        rollout = self._current.settings.rollout if self._current is not None else None
        if rollout is not None and self._start_canary is not None:
            self._hold_on_canaries(snap, signer, rollout.canary, rollout.hold)
            return
        self._drop_hold(f"{revision[:12]} was served to every node")
        try:
            if self._serve_off_loop is not None:
                await self._serve_off_loop(snap)
            else:
                self._serve(snap)
        except Exception as exc:
            self._log.exception("commit %s could not be served", revision[:12])
            error = f"compiling for the live nodes failed: {exc}"
            self._reject(revision, Checked(None, (error,), "compile"))
            return
        self.status.rejected = None
        self._serving(snap, signer)

    # Canary rollout

    def _hold_on_canaries(
        self,
        snap: Snapshot,
        signer: str | None,
        canary: str,
        hold: timedelta,
        *,
        note: str | None = None,
    ) -> None:
        """Serve `snap` to the canary nodes for the hold (a newer commit
        replaces the candidate held, and its hold starts again). The hold's
        time runs once a canary node is online."""
        assert self._start_canary is not None
        try:
            self._start_canary(snap, canary)
        except Exception as exc:
            self._log.exception("commit %s could not be served", snap.id[:12])
            error = f"compiling for the live nodes failed: {exc}"
            self._reject(snap.id, Checked(None, (error,), "compile"))
            return
        if self._hold is not None:
            self._log.info(
                "rollout of %s replaced by %s", self._hold.snapshot.id[:12], snap.id[:12]
            )
        self._hold = Hold.start(
            snap, signer, canary, hold, self._clock(),
            canary_online=self._canary_online(canary), note=note,
        )  # fmt: skip
        self.status.rollout = self._hold.status
        self.status.rejected = None
        self.rollout_wake.set()
        until = self._hold.until
        self._log.info(
            "commit %s is served to %s until %s, then to every node",
            snap.id[:12],
            canary,
            until.isoformat() if until is not None else f"{hold} after one is online",
            extra=event("rollout.holding", commit=snap.id, canary=canary),
        )

    def rollout_due(self) -> datetime | None:
        """When the hold in progress ends (None: no rollout is holding)."""
        return self._hold.until if self._hold is not None else None

    def handle_timer(self, now: datetime) -> None:
        """The rollout timer fired: promote the candidate once its hold is over."""
        if self._hold is not None and self._hold.due(now):
            self.promote("the hold ended with every canary node online")

    def canary_online(self) -> None:
        """A canary node came online: a hold that waited for one starts now."""
        if self._hold is None or self._hold.until is not None:
            return
        self._hold = self._hold.canary_online(self._clock())
        self.status.rollout = self._hold.status
        self.rollout_wake.set()
        self._log.info(
            "a %s node is online: %s holds until %s",
            self._hold.canary,
            self._hold.snapshot.id[:12],
            self._hold.until,
        )

    def canary_offline(self, node_name: str) -> None:
        """A canary node went offline during the hold: the rollout fails."""
        if self._hold is not None:
            self.abort(f"canary node {node_name} went offline during the hold")

    def promote(self, reason: str) -> None:
        """Serve the candidate to every node now (RolloutError: none holding)."""
        hold = self._take_hold()
        assert self._serve is not None
        try:
            self._serve(hold.snapshot)
        except Exception as exc:
            self._end_canary()
            self.status.rollout = hold.status.ended("aborted", f"promotion failed: {exc}")
            error = f"compiling for the live nodes failed: {exc}"
            self._reject(hold.snapshot.id, Checked(None, (error,), "compile"))
            return
        self.status.rollout = hold.status.ended("promoted", reason)
        self._serving(hold.snapshot, hold.signer)
        self._log.info(
            "rollout of %s promoted: %s",
            hold.snapshot.id[:12],
            reason,
            extra=event("rollout.promoted", commit=hold.snapshot.id, reason=reason),
        )

    def abort(self, reason: str) -> None:
        """Send the canaries back and refuse the candidate (RolloutError: none holding)."""
        hold = self._take_hold()
        self._end_canary()
        self.status.rollout = hold.status.ended("aborted", reason)
        error = ABORTED + reason
        self._reject(hold.snapshot.id, Checked(None, (error,), "canary"))

    def _take_hold(self) -> Hold:
        hold = self._hold
        if hold is None:
            raise RolloutError("no rollout is holding")
        self._hold = None
        self.rollout_wake.set()
        return hold

    def _drop_hold(self, reason: str) -> None:
        """A commit is served to everyone without a rollout: the candidate held is gone."""
        if self._hold is not None:
            self.status.rollout = self._take_hold().status.ended("aborted", reason)
            self._end_canary()

    async def serving_documents(self) -> Documents:
        """The files of the commit being served (for the API's policy file)."""
        serving = self.status.serving
        if serving is not None and not serving.startswith("sha256:"):
            return await asyncio.to_thread(read_git, self.repo.path, serving)
        folder = self.repo.path / "tailnet.d"
        return await asyncio.to_thread(
            read_directory, folder if folder.is_dir() else self.repo.path
        )

    # Outcomes

    def _verified(self, revision: str, checked: Checked) -> tuple[Checked, str | None]:
        """The check with the signature's verdict added, and the signer."""
        if checked.snapshot is None:
            return checked, None
        verdict = self.authority.check(revision, checked.snapshot)
        if verdict.refusal is not None:
            return Checked(None, (verdict.refusal,), "signature"), None
        return checked, verdict.signer

    def _last_rejected(self) -> str | None:
        return self.status.rejected.revision if self.status.rejected is not None else None

    def _serving(self, snap: Snapshot, signer: str | None) -> None:
        self._current = snap
        self.status.serving = snap.id
        self.status.serving_since = self._clock()
        self.status.signer = signer
        if self.repo.is_git:
            write_private(self._last_good, (snap.id + "\n").encode())
            self._schema_passed.record(snap.id)
            self.authority.serving(snap.revision, snap)
            self.history.append(HistoryEntry(snap.id, self._clock(), "served", signer))
        self._on_outcome("served", snap.id, ())

    def _reject(self, revision: str, checked: Checked) -> None:
        errors = checked.errors
        self._metrics.rejected(checked.reason or "compile")
        rejection = Rejection(revision, self._clock(), errors)
        self.status.rejected = rejection
        self.history.append(HistoryEntry(revision, rejection.at, "rejected", None, errors))
        self._on_outcome("rejected", revision, errors)
        self._log.error(
            "commit %s rejected, still serving %s:\n%s",
            revision[:12],
            (self.status.serving or "nothing")[:12],
            "\n".join(f"  {e}" for e in errors),
            extra=event(
                "snapshot.rejected",
                commit=revision,
                reason=checked.reason or "compile",
                serving=self.status.serving,
                errors=len(errors),
            ),
        )
