"""`gitctl diff --expiring-within`: the time-limited access that ends soon.

Lists, for the revision under review, each ACL entry, grant, SSH rule and group
membership whose ``expires`` falls within the window: whose access ends, what
they lose, when, and the file:line:col of the time.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from gitctl.policy import Expiring, expiring_within
from gitctl.snapshot import Snapshot

__all__ = ["ExpiringAccess", "expiring_access", "parse_window", "render_expiring"]

_UNITS = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1}
_WINDOW = re.compile(r"(?:(\d+)([wdhms]))")
MAX_WINDOW = timedelta(days=3660)  # ten years: past that it is a typo, not a plan


def parse_window(text: str) -> timedelta:
    """`7d`, `36h`, `1d12h`, `2w`, `90m`; ValueError with what is wanted otherwise."""
    parts = _WINDOW.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"{text!r} is not a duration such as 7d, 36h, 1d12h or 2w")
    window = timedelta(seconds=sum(int(n) * _UNITS[u] for n, u in parts))
    if window > MAX_WINDOW:
        raise ValueError(f"{text!r} is longer than ten years")
    return window


@dataclass(frozen=True, slots=True)
class ExpiringAccess:
    entry: Expiring
    location: str  # file:line:col of the `expires` value


def expiring_access(
    snapshot: Snapshot, now: datetime, window: timedelta
) -> tuple[ExpiringAccess, ...]:
    """The snapshot's access in force at `now` that expires within `window`, soonest first."""
    if snapshot.policy is None:
        return ()
    return tuple(
        ExpiringAccess(e, snapshot.policy_diagnostic(e.path, "").location())
        for e in expiring_within(snapshot.policy, now, window)
    )


def _when(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _rule(e: Expiring) -> str:
    section, index = e.path[0], e.path[1]
    return f"{section}[{index}]"


def _line(item: ExpiringAccess, md: bool) -> str:
    e = item.entry

    def code(text: str) -> str:
        return f"`{text}`" if md else text

    if e.kind == "group member":
        text = f"{code(e.who[0])} leaves {code(e.what)}"
    else:
        who = ", ".join(code(w) for w in e.who)
        kind = {"acl": "access", "grant": "the grant", "ssh": "SSH"}[e.kind]
        text = f"{who}: {kind} to {code(e.what)} ({_rule(e)}) ends"
    return f"{text} at {_when(e.expires)} ({item.location})"


def render_expiring(items: Sequence[ExpiringAccess], window: str, fmt: str) -> str:
    """The text or markdown section; empty when nothing expires in the window."""
    if not items:
        return ""
    md = fmt == "markdown"
    title = f"Access expiring within {window}"
    lines = [f"**{title}**" if md else title]
    lines += [f"{'- ⏳' if md else '  !'} {_line(item, md)}" for item in items]
    return "\n".join(lines) + "\n"


def expiring_json(items: Sequence[ExpiringAccess]) -> list[dict[str, Any]]:
    return [
        {
            "kind": item.entry.kind,
            "rule": None if item.entry.kind == "group member" else _rule(item.entry),
            "who": list(item.entry.who),
            "what": item.entry.what,
            "expires": item.entry.expires.astimezone(UTC).isoformat().replace("+00:00", "Z"),
            "location": item.location,
        }
        for item in items
    ]
