"""Canary rollout: a checked commit held by the canary nodes before everyone.

With settings.yaml's `rollout: {canary: tag:canary, hold: 5m}` (of the commit
being served), a new commit is first served to the nodes with the canary tag
only. The hold runs from the moment a canary node is online (while none is,
the candidate waits: a commit no canary has run is not promoted), and at its
end the commit is promoted (served to every node); if a canary node goes
offline during the hold — its map stream ends: tailscaled that crashes,
hangs, or cannot apply its map drops it — the rollout is aborted: the
canaries go back to the commit everyone has, and the commit is refused like
a broken one (its refusal starts with `ABORTED`, which a restart reads back
from the history). `tailnetd rollout promote|abort` decide early.

This module holds the state and its transitions, with time passed in; the
commit lifecycle (`lifecycle.py`) acts on them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Literal

from gitctl.snapshot import Snapshot

__all__ = ["ABORTED", "Hold", "Phase", "RolloutError", "RolloutStatus"]

ABORTED = "canary rollout aborted: "  # how an aborted candidate's refusal begins

Phase = Literal["holding", "promoted", "aborted"]


class RolloutError(Exception):
    """A promote or abort with no rollout holding; the message is for people."""


@dataclass(frozen=True, slots=True)
class RolloutStatus:
    """The last rollout, as the status API and `tailnetd status` show it."""

    revision: str
    phase: Phase
    until: datetime | None  # the end of the hold (None: no canary node online yet)
    reason: str | None = None  # why it ended, or what a hold waits for

    def to_json(self) -> dict[str, Any]:
        return {
            "revision": self.revision,
            "phase": self.phase,
            "until": self.until.isoformat() if self.until is not None else None,
            "reason": self.reason,
        }

    def ended(self, phase: Phase, reason: str) -> RolloutStatus:
        return RolloutStatus(self.revision, phase, self.until, reason)


@dataclass(frozen=True, slots=True)
class Hold:
    """A candidate commit on the canary nodes: promoted at `until`, which is
    set when a canary node is online (None: none has been yet)."""

    snapshot: Snapshot
    signer: str | None
    canary: str  # the tag of the canary nodes
    hold: timedelta
    until: datetime | None
    note: str | None = None  # why this hold began other than by a new commit

    @classmethod
    def start(
        cls,
        snap: Snapshot,
        signer: str | None,
        canary: str,
        hold: timedelta,
        now: datetime,
        *,
        canary_online: bool,
        note: str | None = None,
    ) -> Hold:
        return cls(snap, signer, canary, hold, now + hold if canary_online else None, note)

    def canary_online(self, now: datetime) -> Hold:
        """A canary node is online: the hold's time runs from now, once."""
        if self.until is not None:
            return self
        return replace(self, until=now + self.hold)

    @property
    def status(self) -> RolloutStatus:
        waiting = None
        if self.until is None:
            waiting = f"no {self.canary} node is online: the hold starts when one is"
        reason = "; ".join(r for r in (self.note, waiting) if r) or None
        return RolloutStatus(self.snapshot.id, "holding", self.until, reason)

    def due(self, now: datetime) -> bool:
        return self.until is not None and now >= self.until
