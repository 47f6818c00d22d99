"""Which commits may be served: the signature rule of `gitctl.signers`, applied by the server.

With a trusted-signers file outside the repository (`--trusted-signers`), every commit
must be signed by a key it lists; no commit can change that file. Otherwise a served
commit's `trusted_signers` setting names the list the *next* commit is checked against,
so a commit that adds a key must be signed by a key trusted before it. The first commit a
fresh data dir serves, or the one that turns signing on, is checked against its own list
(trust on first use): give the server the outside file to anchor trust instead.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gitctl.signers import SignersError, check_commit, read_trust_file, required_trust

__all__ = ["CommitAuthority", "Verdict"]


@dataclass(frozen=True, slots=True)
class Verdict:
    signer: str | None  # the trusted signer's principal; None when nothing was required
    refusal: str | None  # why the commit must not be served; None when it may

    @property
    def ok(self) -> bool:
        return self.refusal is None


@dataclass(frozen=True, slots=True)
class Served:
    """What the next commit is checked against: the serving commit and its setting."""

    revision: str
    trusted_signers: str | None


class CommitAuthority:
    def __init__(self, repo_path: Path, outside: Path | None, *, log: logging.Logger) -> None:
        self.repo_path = repo_path
        self.outside = outside
        self.log = log
        self.served: Served | None = None

    @property
    def needs_previous(self) -> bool:
        """Whether the previous commit's setting matters (it does not with an outside file)."""
        return self.outside is None

    def serving(self, revision: str | None, snapshot: Any) -> None:
        """`snapshot` (of `revision`) is served now: it sets the list for the next commit."""
        if revision is None:
            self.served = None
            return
        if snapshot is None:  # the last served commit no longer loads (a newer tailnetd?)
            self.log.warning("commit %s: its trusted signers cannot be read", revision[:12])
        setting = snapshot.settings.trusted_signers if snapshot is not None else None
        self.served = Served(revision, setting)

    def check(self, revision: str, snapshot: Any) -> Verdict:
        """May `snapshot` (loaded from `revision`) replace the one being served?"""
        setting = snapshot.settings.trusted_signers
        previous = self.served
        try:
            outside = read_trust_file(self.outside) if self.outside is not None else None
            trust = required_trust(
                self.repo_path,
                revision,
                setting,
                outside=outside,
                previous=previous.revision if previous else None,
                previous_setting=previous.trusted_signers if previous else None,
            )
            if trust is None:
                return Verdict(None, None)
            signature = check_commit(self.repo_path, revision, trust)
            if not signature.trusted:
                return Verdict(None, signature.describe())
            if setting is not None and outside is None:
                # The list this commit names must exist: the next commit is checked
                # against it, and a missing one would leave nothing servable.
                required_trust(self.repo_path, revision, setting)
        except SignersError as exc:
            return Verdict(None, f"commit {revision[:12]}: {exc}")
        return Verdict(signature.signer, None)
