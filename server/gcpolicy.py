"""Keeping the cyclic garbage collector out of a big commit's way.

CPython runs a full (generation 2) collection whenever the containers that
reached generation 2 since the last full one exceed a quarter of those
already there. `tailnetd serve` freezes what start-up built (server/cli.py),
so "already there" is small, and a policy commit at 20,000 nodes, which makes
~20,000 views and messages, triggered 3-4 full collections, each scanning
everything made since start-up (every session, view and peer entry): 30-40 %
of the commit's CPU (docs/bench/NOTE-moonshot.md), though a commit leaves no
cyclic garbage (`gc.collect()` after a commit finds none).

`GcPolicy`:
* `hold()`: a commit (or a large wake) begins. Until it is released only the
  youngest generation is collected (the older generations' thresholds
  raised): each object the commit makes is scanned once, in generation 0, and
  short-lived cycles made meanwhile (requests, exceptions) are still freed.
  Neither a full collection nor a generation-1 pass rescans what the commit
  keeps (with generation 1 on as well, the collections of a 10,000-node
  commit cost 75-100 ms of CPU; off, about half that).
* `release()`: its fan-out drained. What the commit left in place (the new
  index, views, messages, sessions) is frozen: no later collection scans it
  again. Frozen objects are still freed by reference counting when replaced
  (a replaced index is: it holds no cycles, tests/unit/test_gcpolicy.py);
  only cyclic garbage that outlived generation 0 during the hold is kept.
* Every `sweep_every` freezes that garbage is reclaimed: unfreeze, one full
  collection, freeze again. Its pause is one scan of the whole heap (at
  20,000 nodes ~0.9 s of CPU, docs/bench/NOTE-gc.md), taken right after a
  fan-out drained, never inside one.
* `grew(n)`: sessions opened (a connect or registration storm); every
  `freeze_after` of them what they made is frozen as a release does, so a
  restart's sessions are not scanned by every later collection. The batch is
  small, a freeze every few young collections: then neither a full nor a
  generation-1 collection comes in a storm (each rescanned what the sessions
  since the last freeze made). In a 1,000-node registration storm, batches
  of 1,024 paid 17 generation-1 collections and a full one, ~80 us of each
  registration's ~1.8 ms of CPU; batches of 32 pay none (gc.callbacks timed
  by thread_time, docs/bench/NOTE-regcpu.md). These freezes count towards a
  sweep by their sessions, one step per `SWEEP_SESSIONS`, so that small
  batches bring a sweep (a scan of the whole heap) no sooner.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass

__all__ = [
    "FREEZE_AFTER",
    "HELD_THRESHOLD",
    "SWEEP_EVERY",
    "SWEEP_SESSIONS",
    "GcPolicy",
    "GcStats",
]

# Generations 1 and 2's thresholds while held: only generation 0 is collected
# (the collections needed to reach these are never made in a commit).
HELD_THRESHOLD = 1 << 30
# Freezes between sweeps: cyclic garbage frozen by mistake lives at most this
# many commits. A sweep scans the whole heap once (see the NOTE for its pause).
SWEEP_EVERY = 16
# Sessions opened between freezes (a restart's connect storm, a registration storm).
FREEZE_AFTER = 32
# Sessions frozen that count as one freeze towards a sweep.
SWEEP_SESSIONS = 1024


@dataclass(slots=True)
class GcStats:
    """What the policy did (metrics and tests count these)."""

    holds: int = 0
    freezes: int = 0
    sweeps: int = 0
    swept: int = 0  # unreachable objects the sweeps found


class GcPolicy:
    """Holds full collections during a commit, freezes what it leaves after.
    Holds nest: the threshold comes back when the last one is released."""

    def __init__(self, *, sweep_every: int = SWEEP_EVERY, freeze_after: int = FREEZE_AFTER) -> None:
        self.sweep_every = sweep_every
        self.freeze_after = freeze_after
        self.stats = GcStats()
        self._held = 0
        self._saved: tuple[int, int, int] | None = None
        self._since_sweep = 0.0  # freezes since the last sweep, storm freezes by their sessions
        self._opened = 0

    @property
    def held(self) -> bool:
        return self._held > 0

    def hold(self) -> None:
        """A commit or a large wake begins: no full collection until released."""
        if self._held == 0:
            self._saved = t0, t1, t2 = gc.get_threshold()
            gc.set_threshold(t0, HELD_THRESHOLD, HELD_THRESHOLD)
        self._held += 1
        self.stats.holds += 1

    def release(self) -> None:
        """One hold's fan-out drained; the last one freezes what is left."""
        if self._held == 0:
            return
        self._held -= 1
        if self._held == 0:
            if self._saved is not None:
                gc.set_threshold(*self._saved)
                self._saved = None
            self._freeze()

    def grew(self, count: int = 1) -> None:
        """`count` sessions opened: freeze their state every `freeze_after`."""
        self._opened += count
        if self._opened >= self.freeze_after and self._held == 0:
            self._freeze(self._opened / SWEEP_SESSIONS)

    def _freeze(self, step: float = 1.0) -> None:
        self._opened = 0
        self._since_sweep += step
        if self._since_sweep >= self.sweep_every:
            self._since_sweep = 0.0
            gc.unfreeze()
            self.stats.swept += gc.collect()
            self.stats.sweeps += 1
        gc.freeze()
        self.stats.freezes += 1
