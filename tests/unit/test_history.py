"""The commit history file: newest first, private, bounded, and a torn line does not hide
the rest."""

from __future__ import annotations

import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

from server.sources.history import History, HistoryEntry

T0 = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def entry(n: int, outcome: str = "served") -> HistoryEntry:
    return HistoryEntry(f"{n:040x}", T0 + timedelta(minutes=n), outcome, None, ())  # type: ignore[arg-type]


def test_newest_first_and_readable_by_the_owner_alone(tmp_path: Path) -> None:
    history = History(tmp_path / "history.jsonl")
    history.append(entry(1))
    history.append(HistoryEntry("b" * 40, T0, "rejected", None, ("tailnet.d/x.yaml:1:1: bad",)))
    assert [e.outcome for e in history.entries()] == ["rejected", "served"]
    assert history.entries()[0].reasons == ("tailnet.d/x.yaml:1:1: bad",)
    assert stat.S_IMODE((tmp_path / "history.jsonl").stat().st_mode) == 0o600


def test_a_repeat_of_the_newest_entry_is_not_recorded(tmp_path: Path) -> None:
    history = History(tmp_path / "history.jsonl")
    history.append(entry(1))
    history.append(entry(1))  # a restart serving the same commit
    assert len(history.entries()) == 1


def test_bounded_the_newest_entries_are_kept(tmp_path: Path) -> None:
    history = History(tmp_path / "history.jsonl", keep=5)
    for n in range(12):
        history.append(entry(n))
    kept = history.entries()
    assert len(kept) <= 10
    assert kept[0].revision == f"{11:040x}"
    assert len((tmp_path / "history.jsonl").read_bytes().splitlines()) <= 10


def test_a_torn_line_is_skipped(tmp_path: Path) -> None:
    history = History(tmp_path / "history.jsonl")
    history.append(entry(1))
    with (tmp_path / "history.jsonl").open("ab") as fh:
        fh.write(b'{"revision": "half')
    assert [e.revision for e in history.entries()] == [f"{1:040x}"]
    assert history.signer_of(f"{1:040x}") is None
