"""Which of a router's routes each viewer is told about (AllowedIPs of peers)."""

from __future__ import annotations

from typing import Any

from .addrs import Span, is_exit_route, span
from .aliases import Index
from .noderules import NodeRules
from .routes import RouteTable


class RouteVisibility:
    """Which of a router's routes a viewer is told about.

    A viewer learns a route when it may send into it (a rule lets the viewer
    reach the router through that route), when it accepts traffic from it
    (one of its own rules has a source inside the route), or when it serves
    the same route (failover). Otherwise the route would only leak the
    subnet's existence. A viewer that reaches a route only through ``via``
    grants is shown it on the first of its via routers instead of the primary.
    """

    def __init__(self, index: Index, table: RouteTable, per_node: NodeRules) -> None:
        self.index = index
        self.table = table
        self.per_node = per_node
        self._senders: dict[tuple[int, str, bool], int] = {}
        self._accepts: dict[int, list[Span] | None] = {}
        self._via: dict[int, dict[str, int]] = {}
        # (only routers have routes: a join of a node without any costs nothing here)
        self._primary_of = {r: i for i in index.routers for r in table.primary[i]}
        # (router, subnet route) pairs some via rule reaches, in registration order
        self._via_routes = [
            (i, r)
            for i in index.routers
            for r in table.enabled[i]
            if not is_exit_route(r) and any(rule.via for rule in per_node[i])
        ]

    def _may_send(self, router: int, route: str, via: bool) -> int:
        key = (router, route, via)
        if key not in self._senders:
            own = set(self.index.ips[router])
            mask = 0
            for rule in self.per_node[router]:
                if rule.via == via and _reaches(rule.entries(router), own, span(route)):
                    mask |= rule.src_mask
            self._senders[key] = mask
        return self._senders[key]

    def _accepted(self, viewer: int) -> list[Span] | None:
        """Spans of the sources this viewer accepts (None: anything)."""
        if viewer not in self._accepts:
            texts = {t for rule in self.per_node[viewer] for t in rule.src_ips}
            self._accepts[viewer] = None if "*" in texts else [span(t) for t in texts]
        return self._accepts[viewer]

    def _via_choice(self, viewer: int) -> dict[str, int]:
        """Route -> the router a via-only viewer uses for it."""
        if viewer in self._via:
            return self._via[viewer]
        choice: dict[str, int] = {}
        for router, route in self._via_routes:
            if route not in choice and self._may_send(router, route, True) >> viewer & 1:
                choice[route] = router
        primary_of = self._primary_of
        for route in list(choice):
            p = primary_of.get(route)
            if p is not None and self._may_send(p, route, False) >> viewer & 1:
                del choice[route]
        self._via[viewer] = choice
        return choice

    def _shown(self, viewer: int, router: int, route: str) -> bool:
        if route in self.table.enabled[viewer]:
            return True
        if self._may_send(router, route, False) >> viewer & 1:
            return True
        accepted = self._accepted(viewer)
        r_span = span(route)
        return accepted is None or any(s.overlaps(r_span) for s in accepted)

    def visible_routes(self, viewer: int, router: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
        via = self._via_choice(viewer)
        primary = tuple(
            r
            for r in self.table.enabled[router]
            if not is_exit_route(r)
            and (
                via.get(r) == router
                or (
                    r in self.table.primary[router]
                    and r not in via
                    and self._shown(viewer, router, r)
                )
            )
        )
        exits = tuple(
            r
            for r in self.table.enabled[router]
            if is_exit_route(r)
            and (self._shown(viewer, router, r) or self._may_send(router, r, True) >> viewer & 1)
        )
        return primary, exits


def _reaches(entries: list[tuple[str, Any]], own: set[str], route: Span) -> bool:
    """Whether filter entries delivered to a router address the given route."""
    return any(t == "*" or (t not in own and span(t).overlaps(route)) for t, _ in entries)
