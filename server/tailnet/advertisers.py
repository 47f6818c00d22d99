"""The nodes that advertise routes, of the serving context, kept up to date
change by change: the router probes ask which routers share a subnet every
second (`Tailnet.shared_routers`), and every runtime event replaces the
context. Looking at every node again after each one cost 15 ms per probe
round at 2,000 nodes; following the change log costs the ids it names."""

from __future__ import annotations

from collections.abc import Mapping

from server.store.model import Node
from server.tailnet.changelog import ChangeLog
from server.tailnet.follow import FollowedIndex
from server.tailnet.views import advertised_routes

__all__ = ["Advertisers", "advertisers_of"]


class Advertisers(FollowedIndex):
    """Ids of the nodes that advertise routes, in the map last asked about."""

    def __init__(self, log: ChangeLog) -> None:
        super().__init__(log)
        self.log = log
        self._ids: set[int] = set()

    def among(self, nodes: Mapping[int, Node]) -> list[Node]:
        """The nodes of `nodes` that advertise routes, by id."""
        self.follow(nodes)
        return [nodes[i] for i in sorted(self._ids)]

    def _index_all(self, nodes: Mapping[int, Node]) -> None:
        self._ids = {i for i, n in nodes.items() if advertised_routes(n)}

    def _file(self, node_id: int, node: Node | None) -> None:
        if node is not None and advertised_routes(node):
            self._ids.add(node_id)
        else:
            self._ids.discard(node_id)


def advertisers_of(held: Advertisers | None, log: ChangeLog) -> Advertisers:
    """`held` while it follows `log` (the contexts' entries), else a new one."""
    return held if held is not None and held.log is log else Advertisers(log)
