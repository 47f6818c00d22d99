"""Health probes of subnet routers that share a subnet (HA routes).

A router can stop answering while its map stream stays open (a hung process,
a stopped VM): for the primary election it is then as good as offline. The
server sends such routers a `PingRequest` in their map stream every
`interval`; the client answers with a ``HEAD`` over Noise to the URL (each
probe's URL is new: the client ignores a URL it answered last). A router that
leaves `misses` probes in a row unanswered is unhealthy; its next answer makes
it healthy again.

Sans-IO: the caller says which routers to probe (`track`), asks for the probes
due (`due(now)`), reports answers (`answered`), and applies the health
transitions each returns. Time is passed in; nothing here sleeps or sends.
"""

from __future__ import annotations

from collections.abc import Callable, Set
from dataclasses import dataclass, field
from datetime import datetime, timedelta

__all__ = ["Probe", "RouterProbes"]

# Health transitions: (node id, healthy)
Transition = tuple[int, bool]


@dataclass(frozen=True, slots=True)
class Probe:
    """One probe to send: the token names it in the answer's URL."""

    node_id: int
    token: str


@dataclass(slots=True)
class _Router:
    next_at: datetime
    outstanding: str | None = None  # token of the probe not answered yet
    missed: int = 0
    healthy: bool = True
    tokens: list[str] = field(default_factory=list)  # recent probes, newest last


_RECENT = 4  # answers to this many latest probes count (a late answer is still an answer)


class RouterProbes:
    def __init__(self, *, interval: timedelta, misses: int, token: Callable[[], str]) -> None:
        if interval <= timedelta(0) or misses < 1:
            raise ValueError("probe interval must be positive and misses at least 1")
        self._interval = interval
        self._misses = misses
        self._token = token
        self._routers: dict[int, _Router] = {}

    def track(self, node_ids: Set[int], now: datetime) -> list[Transition]:
        """Probe exactly `node_ids` from now on. A router no longer probed
        (offline, or alone on its subnets) is no longer held unhealthy."""
        out: list[Transition] = []
        for node_id in sorted(set(self._routers) - set(node_ids)):
            if not self._routers.pop(node_id).healthy:
                out.append((node_id, True))
        for node_id in node_ids:
            self._routers.setdefault(node_id, _Router(next_at=now))
        return out

    def due(self, now: datetime) -> tuple[list[Probe], list[Transition]]:
        """The probes to send now, and the routers that just became unhealthy
        (the probe before this one went unanswered, `misses` times in a row)."""
        probes: list[Probe] = []
        out: list[Transition] = []
        for node_id, r in sorted(self._routers.items()):
            if now < r.next_at:
                continue
            if r.outstanding is not None:
                r.missed += 1
                if r.healthy and r.missed >= self._misses:
                    r.healthy = False
                    out.append((node_id, False))
            token = self._token()
            r.outstanding = token
            r.tokens = [*r.tokens[-(_RECENT - 1) :], token]
            r.next_at = now + self._interval
            probes.append(Probe(node_id, token))
        return probes, out

    def answered(self, node_id: int, token: str) -> list[Transition]:
        """`node_id` answered the probe `token` (an unknown token is ignored)."""
        r = self._routers.get(node_id)
        if r is None or token not in r.tokens:
            return []
        r.outstanding = None
        r.missed = 0
        if r.healthy:
            return []
        r.healthy = True
        return [(node_id, True)]

    def next_due(self) -> datetime | None:
        return min((r.next_at for r in self._routers.values()), default=None)

    def unhealthy(self) -> frozenset[int]:
        return frozenset(i for i, r in self._routers.items() if not r.healthy)
