"""Which router is primary for a subnet that several routers serve (HA routes).

Tailscale's and headscale's rule: the earliest registered router that is
online is primary. A primary keeps its prefix while it is online, so a router
that comes back after a failover does not take the prefix back (no flapping);
when no router is online the last primary stays listed, so peers keep the
route until one returns. Pure: the caller passes who is online and who was
primary last time.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence, Set
from datetime import datetime
from typing import TypeVar

__all__ = ["elect_primaries"]

N = TypeVar("N", bound=Hashable)


def _registration_order(candidates: Sequence[tuple[N, datetime | None]]) -> list[N]:
    """Earliest registration first; ties and unknown times (last) keep the given order."""
    ranked = sorted(
        enumerate(candidates),
        key=lambda ic: (ic[1][1] is None, ic[1][1] or datetime.min, ic[0]),
    )
    return [node for _, (node, _) in ranked]


def elect_primaries(
    routers: Mapping[str, Sequence[tuple[N, datetime | None]]],
    online: Set[N],
    previous: Mapping[str, N],
) -> dict[str, N]:
    """``{prefix: primary}`` for every prefix that has a router.

    ``routers`` maps each approved non-exit prefix to the routers serving it
    with their registration time (aware datetimes, or None when unknown), in
    node order, which breaks ties. ``online`` holds the routers reachable
    now; ``previous`` the primaries last served.

    - The current primary keeps the prefix while it serves it and is online.
    - Otherwise the earliest registered online router takes it.
    - With no router online, the previous primary stays if it still serves
      the prefix, else the earliest registered router is listed.
    """
    out: dict[str, N] = {}
    for prefix, candidates in routers.items():
        if not candidates:
            continue
        ranked = _registration_order(candidates)
        last = previous.get(prefix)
        if last is not None and last not in ranked:
            last = None  # it no longer serves the prefix
        if last is not None and last in online:
            out[prefix] = last
            continue
        up = [node for node in ranked if node in online]
        out[prefix] = up[0] if up else last if last is not None else ranked[0]
    return out
