"""Loading a revision for review: whatever still loads, so a diff never goes blind.

The server serves a commit only when every file loads and every policy test passes. A
reviewer of a broken commit still wants to see what it changes: a failing policy test should
not hide the access diff, and a typo in dns.yaml should not hide a change to the policy.
`load_for_review` loads a revision as the server does and, when that fails, builds the
closest thing that can be compared:

- policy tests fail: the snapshot as it would be without the tests (`LoadResult.untested`);
- a file does not parse or validate: that file is replaced by its version in the base
  revision (or left out when the base has none), and the rest is loaded again. The names
  of those files are given so the review can say which of its parts are not HEAD's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime

from gitctl.diagnostics import Diagnostic, Severity
from gitctl.snapshot import LoadResult, Snapshot, load_snapshot
from gitctl.sources import Documents, SourceError, read_git

__all__ = ["MAX_ROUNDS", "Reviewed", "load_for_review"]

# Each round replaces the files the previous one blamed; a merge conflict can move the blame
# to a second file once or twice, never more in practice.
MAX_ROUNDS = 4


@dataclass(frozen=True, slots=True)
class Reviewed:
    result: LoadResult  # the revision loaded exactly as the server would
    documents: Documents | None  # its files (None: the revision could not be read)
    snapshot: Snapshot | None  # what a review compares (None: nothing loads)
    stand_ins: tuple[str, ...] = ()  # files whose base version (or absence) stands in

    @property
    def broken(self) -> bool:
        """Whether the server would refuse this revision."""
        return not self.result.ok


def _blamed(result: LoadResult, files: dict[str, bytes]) -> set[str]:
    return {d.file for d in result.diagnostics if d.severity is Severity.ERROR and d.file in files}


def _usable(result: LoadResult) -> Snapshot | None:
    return result.snapshot if result.snapshot is not None else result.untested


def load_for_review(
    repo: str | os.PathLike[str],
    rev: str,
    base: Documents | None = None,
    *,
    now: datetime | None = None,
) -> Reviewed:
    """`rev` of `repo`, and the snapshot a review of it can compare (see the module doc).

    `base` is the revision under review's base; without it no file is replaced. `now` is
    when expiring access is judged (see `load_snapshot`).
    """
    try:
        docs = read_git(repo, rev)
    except SourceError as exc:
        return Reviewed(LoadResult(None, (Diagnostic(exc.where, 1, 1, exc.message),)), None, None)
    result = load_snapshot(docs, now=now)
    snapshot = _usable(result)
    if snapshot is not None or base is None:
        return Reviewed(result, docs, snapshot)
    files = dict(docs.files)
    stand_ins: list[str] = []
    attempt = result
    for _ in range(MAX_ROUNDS):
        blamed = _blamed(attempt, files)
        if not blamed:
            break
        for path in sorted(blamed):
            stand_ins.append(path)
            if path in base.files:
                files[path] = base.files[path]
            else:
                del files[path]
        attempt = load_snapshot(Documents(docs.root, files, docs.revision), now=now)
        snapshot = _usable(attempt)
        if snapshot is not None:
            return Reviewed(result, docs, snapshot, tuple(stand_ins))
    return Reviewed(result, docs, None, tuple(stand_ins))
