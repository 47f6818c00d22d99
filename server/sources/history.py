"""What the server did with each commit: served or rejected, when, signed by whom, why.

An append-only JSON-lines file in the data dir, readable by its owner alone, bounded:
past twice `keep` lines it is rewritten with the newest `keep`. Read newest first by
`tailnetd history` and `GET /api/v1/history`. Not the state store: it survives a change of
store, and a person can read it with `tail`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from server.datadir import write_private

__all__ = ["HISTORY_FILE", "History", "HistoryEntry", "history_json"]

HISTORY_FILE = "history.jsonl"
KEEP = 500
MAX_REASONS = 20  # errors kept per rejected commit
MAX_REASON_CHARS = 2000
MAX_LIMIT = 1000

Outcome = Literal["served", "rejected"]


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    revision: str
    at: datetime
    outcome: Outcome
    signer: str | None = None
    reasons: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "revision": self.revision,
            "at": self.at.isoformat(),
            "outcome": self.outcome,
            "signer": self.signer,
            "reasons": list(self.reasons),
        }

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> HistoryEntry:
        outcome = value["outcome"]
        if outcome not in ("served", "rejected"):
            raise ValueError(f"unknown outcome {outcome!r}")
        return cls(
            str(value["revision"]),
            datetime.fromisoformat(value["at"]),
            outcome,
            value.get("signer"),
            tuple(str(r) for r in value.get("reasons") or ()),
        )


class History:
    def __init__(self, path: Path, *, keep: int = KEEP) -> None:
        self.path = path
        self.keep = keep

    def entries(self, limit: int | None = None) -> list[HistoryEntry]:
        """Newest first; lines that do not parse (a torn write) are skipped."""
        try:
            lines = self.path.read_bytes().splitlines()
        except FileNotFoundError:
            return []
        out: list[HistoryEntry] = []
        for line in reversed(lines):
            if limit is not None and len(out) >= limit:
                break
            try:
                out.append(HistoryEntry.from_json(json.loads(line)))
            except (ValueError, KeyError, TypeError):
                continue
        return out

    def signer_of(self, revision: str) -> str | None:
        """The signer recorded when `revision` was last served."""
        for entry in self.entries():
            if entry.revision == revision and entry.outcome == "served":
                return entry.signer
        return None

    def latest(self, revision: str) -> HistoryEntry | None:
        """The newest decision about `revision` (None: never decided on)."""
        return next((e for e in self.entries() if e.revision == revision), None)

    def append(self, entry: HistoryEntry) -> None:
        """Record `entry`, unless it only repeats the newest one (a restart serving the
        same commit, or a broken HEAD seen again)."""
        newest = self.entries(limit=1)
        if newest and (newest[0].revision, newest[0].outcome) == (entry.revision, entry.outcome):
            return
        reasons = tuple(r[:MAX_REASON_CHARS] for r in entry.reasons[:MAX_REASONS])
        data = json.dumps(
            HistoryEntry(entry.revision, entry.at, entry.outcome, entry.signer, reasons).to_json()
        )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "ab") as fh:
            fh.write(data.encode() + b"\n")
        self._compact()

    def _compact(self) -> None:
        lines = self.path.read_bytes().splitlines()
        if len(lines) > 2 * self.keep:
            write_private(self.path, b"".join(line + b"\n" for line in lines[-self.keep :]))


def history_json(history: History | None, limit: str | None) -> dict[str, Any]:
    """GET /api/v1/history[?limit=N]: {"history": [entry, …]}, newest first.
    A bad limit is a ValueError (the API answers it as a problem document)."""
    raw = limit or "100"
    if not raw.isdigit() or not 0 < int(raw) <= MAX_LIMIT:
        raise ValueError(f"limit must be a whole number from 1 to {MAX_LIMIT}")
    entries = history.entries(limit=int(raw)) if history is not None else []
    return {"history": [e.to_json() for e in entries]}
