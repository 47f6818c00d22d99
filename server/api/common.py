"""Small pieces both API versions use: finding a node, checking new tags."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from datetime import datetime

from gitctl.tailnet import TailnetSettings
from server.api.problems import Problem
from server.store.model import Node, NotFound
from server.tagcheck import check_new_key_tags
from server.tailnet import NodeRegistry, Tailnet
from server.wire import format_time

__all__ = [
    "approve_routes",
    "check_tags",
    "find_node",
    "optional_time",
    "set_expiry_disabled",
]


def find_node(registry: NodeRegistry, ref: str) -> Node:
    """A node by its id or its name; NotFound (a 404) otherwise."""
    if ref.isdigit():
        node = registry.get(int(ref))
        if node is not None:
            return node
    else:
        for node in registry.nodes():
            if node.given_name == ref:
                return node
    raise NotFound(f"no node {ref!r}: give a node id or name (see GET /api/v1/nodes)")


def check_tags(tailnet: Tailnet, tags: Sequence[str]) -> tuple[str, ...]:
    """The tags, each well formed and declared in the serving policy (else ValueError)."""
    check_new_key_tags(tags, tailnet.source.policy)
    return tuple(dict.fromkeys(tags))


def set_expiry_disabled(
    tailnet: Tailnet, registry: NodeRegistry, node: Node, disabled: bool, now: datetime
) -> Node:
    """Disable a node's key expiry, or enable it again: it then expires after
    settings.yaml's node_key_expiry from now (never, when that is null)."""
    span = (tailnet.source.settings or TailnetSettings()).node_key_expiry
    expires = now + span if span is not None else None
    return registry.set_key_expiry_disabled(node.id, disabled, expires=expires)


def optional_time(when: datetime | None) -> str | None:
    return format_time(when) if when is not None else None


def approve_routes(
    tailnet: Tailnet, registry: NodeRegistry, node: Node, routes: Sequence[str]
) -> Node:
    """Set the routes an operator approves for `node` at runtime (fewer than
    before unapproves the rest). Refused unless the serving commit's settings.yaml
    allows runtime_route_approval: otherwise routes are approved in git only."""
    settings = tailnet.source.settings
    if settings is None or not settings.runtime_route_approval:
        raise Problem(
            "managed-in-git",
            "route approval arrives by commit (routes.yaml, or the policy's autoApprovers);"
            " to approve routes through the API as well, set runtime_route_approval: true in"
            " settings.yaml",
        )
    prefixes = []
    for route in routes:
        try:
            prefixes.append(str(ipaddress.ip_network(route)))
        except ValueError:
            raise ValueError(f"{route!r} is not a CIDR prefix (host bits must be zero)") from None
    return registry.set_runtime_routes(node.id, prefixes)
