"""Canary rollout: a checked commit held by the canary nodes before everyone.

With settings.yaml's `rollout: {canary: tag:canary, hold: 5m}` (of the commit
being served), a new commit is first served to the nodes with the canary tag
only. At the end of the hold it is promoted (served to every node); if a
canary node goes offline during the hold — its map stream ends: tailscaled
that crashes, hangs, or cannot apply its map drops it — the rollout is
aborted: the canaries go back to the commit everyone has, and the commit is
refused like a broken one. `tailnetd rollout promote|abort` decide early.

This module holds the state and its transitions, with time passed in; the
commit lifecycle (`lifecycle.py`) acts on them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from gitctl.snapshot import Snapshot

__all__ = ["Hold", "Phase", "RolloutError", "RolloutStatus"]

Phase = Literal["holding", "promoted", "aborted"]


class RolloutError(Exception):
    """A promote or abort with no rollout holding; the message is for people."""


@dataclass(frozen=True, slots=True)
class RolloutStatus:
    """The last rollout, as the status API and `tailnetd status` show it."""

    revision: str
    phase: Phase
    until: datetime  # the end of the hold (planned, for a promoted or aborted one)
    reason: str | None = None  # why it ended

    def to_json(self) -> dict[str, Any]:
        return {
            "revision": self.revision,
            "phase": self.phase,
            "until": self.until.isoformat(),
            "reason": self.reason,
        }

    def ended(self, phase: Phase, reason: str) -> RolloutStatus:
        return RolloutStatus(self.revision, phase, self.until, reason)


@dataclass(frozen=True, slots=True)
class Hold:
    """A candidate commit on the canary nodes: promoted at `until`."""

    snapshot: Snapshot
    signer: str | None
    canary: str  # the tag of the canary nodes
    until: datetime

    @classmethod
    def start(
        cls, snap: Snapshot, signer: str | None, canary: str, hold: timedelta, now: datetime
    ) -> Hold:
        return cls(snap, signer, canary, now + hold)

    @property
    def status(self) -> RolloutStatus:
        return RolloutStatus(self.snapshot.id, "holding", self.until)

    def due(self, now: datetime) -> bool:
        return now >= self.until
