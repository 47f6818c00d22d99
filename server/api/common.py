"""Small pieces both API versions use: finding a node, checking new tags."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from gitctl.tailnet import TailnetSettings
from server.store.model import Node, NotFound
from server.tagcheck import check_new_key_tags
from server.tailnet import NodeRegistry, Tailnet
from server.wire import format_time

__all__ = ["check_tags", "find_node", "optional_time", "set_expiry_disabled"]


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
