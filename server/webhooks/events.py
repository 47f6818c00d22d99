"""What a webhook says: one event, in a stable JSON shape (docs/operations.md).

```
{"version": 1, "id": "<32 hex>", "type": "node.created", "at": "<ISO 8601 UTC>",
 "node": {"id", "name", "hostname", "user", "tags", "ipv4", "ipv6",
          "key_expiry", "routes"} | null,
 "data": {…the type's own fields…}}
```

Events about one node carry it in `node` and are delivered in the order they
happened (one queue per node); the others queue by what they are about
(`tailnet` for commits, `keys`, `logins`). New fields may be added to an
object; none is removed or changes meaning without a new `version`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, get_args

from server.store.model import Node
from server.tailnet.registry import NodeChange

__all__ = [
    "EVENT_TYPES",
    "EventType",
    "WebhookEvent",
    "node_event",
    "node_events",
    "node_json",
    "route_events",
]

EventType = Literal[
    "node.created",
    "node.deleted",
    "node.expired",
    "node.approved",
    "route.approved",
    "login.refused",
    "snapshot.served",
    "snapshot.rejected",
    "key.created",
    "key.expired",
]
EVENT_TYPES: tuple[EventType, ...] = get_args(EventType)
VERSION = 1


@dataclass(frozen=True, slots=True)
class WebhookEvent:
    type: EventType
    at: datetime
    queue: str  # deliveries of one queue keep their order: `node:<id>`, `tailnet`, …
    node: dict[str, Any] | None = None
    data: dict[str, Any] = field(default_factory=dict)

    def body(self, event_id: str) -> bytes:
        doc = {
            "version": VERSION,
            "id": event_id,
            "type": self.type,
            "at": self.at.isoformat(),
            "node": self.node,
            "data": self.data,
        }
        return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


def node_json(n: Node, routes: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        "id": n.id,
        "name": n.given_name,
        "hostname": n.hostname,
        "user": n.user,
        "tags": list(n.tags),
        "ipv4": str(n.ipv4) if n.ipv4 else None,
        "ipv6": str(n.ipv6) if n.ipv6 else None,
        "key_expiry": n.key_expiry.isoformat() if n.key_expiry else None,
        "routes": list(routes),
    }


def node_event(
    kind: EventType, n: Node, now: datetime, routes: tuple[str, ...] = (), **data: Any
) -> WebhookEvent:
    return WebhookEvent(kind, now, f"node:{n.id}", node_json(n, routes), data)


def node_events(
    change: NodeChange,
    now: datetime,
    served_routes: Callable[[Node], tuple[str, ...]],
    known_routes: dict[int, tuple[str, ...]],
) -> list[WebhookEvent]:
    """The events one registry change means; `known_routes` (node id -> the
    routes last announced as served) is updated in place."""
    old, n = change.previous, change.node
    if n is None:
        known_routes.pop(change.node_id, None)
        return [node_event("node.deleted", old, now)] if old is not None else []
    if change.online is not None:
        return []  # online and offline are not events here
    events: list[WebhookEvent] = []
    routes = served_routes(n) if change.kind == "topology" else known_routes.get(n.id, ())
    if old is None:
        events.append(node_event("node.created", n, now, routes))
    elif n.key_expiry != old.key_expiry and n.key_expiry is not None and n.key_expiry <= now:
        events.append(node_event("node.expired", n, now, routes))
    events += route_events(n, routes, now, known_routes)
    return events


def route_events(
    n: Node, routes: tuple[str, ...], now: datetime, known_routes: dict[int, tuple[str, ...]]
) -> list[WebhookEvent]:
    """`route.approved` when the routes served for `n` differ from the last announced."""
    before = known_routes.get(n.id, ())
    if routes == before:
        return []
    known_routes[n.id] = routes
    added = [r for r in routes if r not in before]
    removed = [r for r in before if r not in routes]
    return [node_event("route.approved", n, now, routes, added=added, removed=removed)]
