"""A git repository's refs watched with inotify, on the event loop.

watchfiles reports a change only after a thread that wakes every `step` ms
has seen `step` ms of quiet: with step=50 a commit reached the server 60-95 ms
after git wrote it, and a smaller step costs idle CPU (step=10: +0.26% of a
core, for ever). Here the kernel wakes the loop when a ref moves, and a short
quiet window (`Settle`) lets the rest of the same git command land first, so
one command gives one look at HEAD.

Only the files that name a commit are watched: `.git` itself (HEAD,
packed-refs, FETCH_HEAD, ...) and every directory under `.git/refs`, not
objects/ or logs/. Linux only: `RefWatch.open` says None elsewhere and the
caller falls back to watchfiles.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["QUIET_SECONDS", "RefWatch", "Settle", "parse_events"]

# How long after the last write a look at HEAD waits, and at most how long
# after the first: git writes a ref's lock, renames it into place, then the
# index, within a millisecond or two of each other.
QUIET_SECONDS = 0.01
LONGEST_SECONDS = 0.2

_IN_MODIFY = 0x2
_IN_CLOSE_WRITE = 0x8
_IN_MOVED_FROM = 0x40
_IN_MOVED_TO = 0x80
_IN_CREATE = 0x100
_IN_DELETE = 0x200
_IN_Q_OVERFLOW = 0x4000
_IN_IGNORED = 0x8000
_IN_ISDIR = 0x40000000
_MASK = _IN_MODIFY | _IN_CLOSE_WRITE | _IN_MOVED_FROM | _IN_MOVED_TO | _IN_CREATE | _IN_DELETE


@dataclass(frozen=True, slots=True)
class Event:
    wd: int
    mask: int
    name: str

    @property
    def new_dir(self) -> bool:
        return bool(self.mask & _IN_ISDIR and self.mask & (_IN_CREATE | _IN_MOVED_TO))

    @property
    def moves_a_ref(self) -> bool:
        """Not a lock file being written: a ref (or HEAD, packed-refs) is in
        place, gone or new; or the kernel lost events and anything may have."""
        if self.mask & (_IN_Q_OVERFLOW | _IN_IGNORED):
            return True
        return not self.name.endswith(".lock")


def parse_events(data: bytes) -> Iterator[Event]:
    """The events in one read of an inotify descriptor (inotify_simple's
    parser: the kernel's struct layout is its business, not ours)."""
    import inotify_simple

    for wd, mask, _cookie, name in inotify_simple.parse_events(data):
        yield Event(wd, mask, name)


class Settle:
    """When to look at HEAD: `quiet` after the last write once a ref moved,
    and no later than `longest` after that first move (a long burst still
    gets looked at). Times are passed in."""

    def __init__(self, quiet: float = QUIET_SECONDS, longest: float = LONGEST_SECONDS) -> None:
        self.quiet, self.longest = quiet, longest
        self._first: float | None = None
        self._last = 0.0

    def event(self, now: float, moves_a_ref: bool) -> None:
        if self._first is None and not moves_a_ref:
            return  # a lock being written: its rename is what counts
        if self._first is None:
            self._first = now
        self._last = now

    def get_timer(self) -> float | None:
        if self._first is None:
            return None
        return min(self._last + self.quiet, self._first + self.longest)

    def handle_timer(self, now: float) -> bool:
        """True: look at HEAD now (and the window starts again)."""
        due = self.get_timer()
        if due is None or now < due:
            return False
        self._first = None
        return True


class RefWatch:
    """inotify on `.git` and `.git/refs/**`; `changed` is set when HEAD may
    have moved (the reader clears it before looking)."""

    def __init__(self, inotify: Any, git_dir: Path, settle: Settle) -> None:
        self._inotify = inotify
        self._fd = inotify.fileno()
        self._dirs: dict[int, Path] = {}
        self._settle = settle
        self._timer: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()
        self.changed = asyncio.Event()
        self._top = self._add(git_dir)  # new directories here (objects/, logs/) are not refs
        self._add_tree(git_dir / "refs")
        self._loop.add_reader(self._fd, self._readable)

    @classmethod
    def open(cls, git_dir: Path, settle: Settle | None = None) -> RefWatch | None:
        """None where inotify is not there (not Linux) or `.git` is not a
        directory (a worktree's `.git` file)."""
        if not git_dir.is_dir():
            return None
        try:
            import inotify_simple

            inotify = inotify_simple.INotify(nonblocking=True)
        except (ImportError, OSError, AttributeError):
            return None
        try:
            return cls(inotify, git_dir, settle or Settle())
        except OSError:
            inotify.close()
            return None

    def _add(self, path: Path) -> int:
        wd = int(self._inotify.add_watch(path, _MASK))
        self._dirs[wd] = path
        return wd

    def _add_tree(self, top: Path) -> None:
        for here, _dirs, _files in os.walk(top):
            self._add(Path(here))

    def _readable(self) -> None:
        try:
            data = os.read(self._fd, 65536)
        except BlockingIOError:
            return
        now = self._loop.time()
        for event in parse_events(data):
            parent = self._dirs.get(event.wd)
            if event.new_dir and parent is not None and event.wd != self._top:
                try:  # a new ref namespace (refs/heads/team/...): watch it and what it holds
                    self._add_tree(parent / event.name)
                except OSError:
                    pass  # gone again already
            self._settle.event(now, event.moves_a_ref)
        self._arm()

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        due = self._settle.get_timer()
        if due is not None:
            self._timer = self._loop.call_at(due, self._due)

    def _due(self) -> None:
        self._timer = None
        if self._settle.handle_timer(self._loop.time()):
            self.changed.set()
        else:
            self._arm()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._loop.remove_reader(self._fd)
        self._inotify.close()
