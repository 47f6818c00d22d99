"""What happens in the server, turned into webhook events.

One `EventSource` per server: a registry listener for node changes, and a
method for each other kind of event its owner reports (a commit served or
rejected, a login refused, a key created or expired, a node expiring by time
or approved). Events reported before the sender exists (the commit served
while the server starts) wait, a bounded few, until `attach`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Literal

from server.store.model import Node
from server.tailnet.registry import NodeChange
from server.webhooks.events import WebhookEvent, node_event, node_events, route_events

__all__ = ["EventSource"]

_EARLY = 64  # events kept while no sender is attached


class EventSource:
    def __init__(
        self,
        *,
        clock: Callable[[], datetime],
        served_routes: Callable[[Node], tuple[str, ...]] = lambda n: (),
    ) -> None:
        self._clock = clock
        self.served_routes = served_routes
        self._known_routes: dict[int, tuple[str, ...]] = {}
        self._early: list[WebhookEvent] = []
        self._emit: Callable[[WebhookEvent], None] | None = None

    def attach(self, emit: Callable[[WebhookEvent], None], nodes: Iterable[Node]) -> None:
        """Start sending through `emit`; `nodes` are the ones known now, whose
        served routes are not news."""
        for n in nodes:
            routes = self.served_routes(n)
            if routes:
                self._known_routes[n.id] = routes
        self._emit = emit
        early, self._early = self._early, []
        for event in early:
            emit(event)

    def _send(self, events: Sequence[WebhookEvent]) -> None:
        for event in events:
            if self._emit is not None:
                self._emit(event)
            elif len(self._early) < _EARLY:
                self._early.append(event)

    def node_changed(self, change: NodeChange) -> None:
        """A registry listener: created, deleted, expired, routes served."""
        self._send(node_events(change, self._clock(), self.served_routes, self._known_routes))

    def routes_rechecked(self, nodes: Iterable[Node]) -> None:
        """A new commit may serve other routes: announce the nodes' that changed."""
        now = self._clock()
        known = self._known_routes
        for n in nodes:
            # Served routes are advertised ones: a node advertising none, and
            # announced with none, has no news (5,000 of them ran before a
            # commit's fan-out).
            if n.hostinfo.routable_ips or n.id in known:
                self._send(route_events(n, self.served_routes(n), now, known))

    def node_expired(self, n: Node) -> None:
        """A node's key reached its expiry (seen by the server's sweep)."""
        self._send([node_event("node.expired", n, self._clock(), self.served_routes(n))])

    def node_approved(self, n: Node, by: str) -> None:
        self._send([node_event("node.approved", n, self._clock(), self.served_routes(n), by=by)])

    def login_refused(self, machine: str, reason: str) -> None:
        data = {"machine": machine, "reason": reason}
        self._send([WebhookEvent("login.refused", self._clock(), f"login:{machine}", None, data)])

    def commit(
        self, outcome: Literal["served", "rejected"], revision: str, errors: Sequence[str] = ()
    ) -> None:
        data = {"commit": revision, "errors": list(errors[:20])}
        kind: Literal["snapshot.served", "snapshot.rejected"] = (
            "snapshot.served" if outcome == "served" else "snapshot.rejected"
        )
        self._send([WebhookEvent(kind, self._clock(), "tailnet", None, data)])

    def key(
        self,
        what: Literal["created", "expired"],
        kind: Literal["preauth", "api"],
        key_id: int,
        prefix: str,
        user: str | None = None,
    ) -> None:
        data = {"kind": kind, "id": key_id, "prefix": prefix, "user": user}
        event_type: Literal["key.created", "key.expired"] = (
            "key.created" if what == "created" else "key.expired"
        )
        self._send([WebhookEvent(event_type, self._clock(), "keys", None, data)])
