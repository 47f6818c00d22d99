"""Which node keys the embedded DERP relays for: the nodes the tailnet serves,
not deleted, not expired or logged out, not cut off from git. A node change
that ends a key's access drops its DERP connection."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from server.protocol.keys import NodePublic
from server.store.model import Node
from server.tailnet.hub import Tailnet
from server.tailnet.registry import NodeChange, NodeRegistry

__all__ = ["DerpAccess", "expired"]


def expired(node: Node, now: datetime) -> bool:
    return node.key_expiry is not None and node.key_expiry <= now


class DerpAccess:
    def __init__(
        self, registry: NodeRegistry, tailnet: Tailnet, *, clock: Callable[[], datetime]
    ) -> None:
        self._registry = registry
        self._tailnet = tailnet
        self._clock = clock

    def allowed(self, key: NodePublic) -> bool:
        node = self._registry.by_node_key(key)
        return (
            node is not None and not expired(node, self._clock()) and self._tailnet.serves(node.id)
        )

    def follow(self, disconnect: Callable[[NodePublic], None]) -> None:
        """From now on, `disconnect` a node key that stops being allowed: deleted,
        replaced by a renewal, expired or logged out, or cut off."""

        def node_changed(change: NodeChange) -> None:
            old, node = change.previous, change.node
            if old is not None and (node is None or node.node_key != old.node_key):
                disconnect(old.node_key)
            if node is not None and not self.allowed(node.node_key):
                disconnect(node.node_key)

        self._registry.subscribe(node_changed)
