"""The nodes that advertise routes, of the serving context, kept up to date
change by change: the router probes ask which routers share a subnet every
second (`Tailnet.shared_routers`), and every runtime event replaces the
context. Looking at every node again after each one cost 15 ms per probe
round at 2,000 nodes; following the change log costs the ids it names."""

from __future__ import annotations

from server.tailnet.changelog import ChangeLog
from server.tailnet.follow import MatchingIds
from server.tailnet.views import advertised_routes

__all__ = ["Advertisers", "advertisers_of"]


class Advertisers(MatchingIds):
    """Ids of the nodes that advertise routes, in the map last asked about."""

    def __init__(self, log: ChangeLog) -> None:
        super().__init__(log, advertised_routes)


def advertisers_of(held: Advertisers | None, log: ChangeLog) -> Advertisers:
    """`held` while it follows `log` (the contexts' entries), else a new one."""
    return held if held is not None and held.log is log else Advertisers(log)
