"""The inventory a policy is evaluated against: the running tailnet's users and devices.

`GET /api/v1/inventory` answers with it and `tailnetd inventory export` writes it, in
`gitctl/schemas/inventory.schema.json`'s format, for `gitctl test|diff|lint|explain
--inventory FILE` in CI. It holds names, tags, addresses and routes, never key material:
nothing in it lets anyone join the tailnet or impersonate a device.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any

from gitctl.policy.roles import DEFAULT_ROLE
from server.store.model import Node
from server.tailnet.views import advertised_routes
from server.wire import format_time

__all__ = ["inventory_json"]


def _node_json(node: Node, approved: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": node.given_name,
        "hostname": node.hostname,
        "user": None if node.tags else node.user,
        "tags": list(node.tags),
        "ipv4": str(node.ipv4) if node.ipv4 else None,
        "ipv6": str(node.ipv6) if node.ipv6 else None,
        "created": format_time(node.created),
    }
    advertised = advertised_routes(node)
    if advertised:
        out["routes"] = {"advertised": list(advertised), "approved": list(approved)}
    if node.hostinfo.os:
        out["os"] = node.hostinfo.os
    if node.hostinfo.ipn_version:
        out["version"] = node.hostinfo.ipn_version
    return out


def inventory_json(
    users: Mapping[str, tuple[str, str]],
    roles: Mapping[str, str] | None,
    nodes: Iterable[Node],
    approved: Callable[[Node], tuple[str, ...]],
    *,
    revision: str,
    exported: datetime,
) -> dict[str, Any]:
    """The inventory document. `users` is the served commit's name -> (email, display
    name); `roles` its lowercased email -> role; `approved` the routes git approves for a
    node by hand (autoApprovers are the compiler's, and it applies them to the file
    too). Devices whose user is not in git are left out: the server does not serve them."""
    table = roles or {}
    return {
        "version": 1,
        "exported": format_time(exported),
        "revision": revision,
        "users": [
            {"name": name, "email": email, "role": table.get(email.lower(), DEFAULT_ROLE)}
            for name, (email, _) in sorted(users.items())
        ],
        "nodes": [
            _node_json(n, approved(n))
            for n in sorted(nodes, key=lambda n: n.id)
            if n.tags or n.user in users
        ],
    }
