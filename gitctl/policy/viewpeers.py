"""How a view index's nodes see their peers: each peer's entry (built once
when it looks the same to every viewer), and a viewer's peers, shared by a
group of nodes that see each other whole.
"""

from __future__ import annotations

from collections.abc import Mapping
from itertools import repeat
from operator import eq, is_, is_not
from typing import Any, Generic, cast

from .aliases import Index
from .bitsets import bits
from .output import NodeKey, PeerView
from .routevis import RouteVisibility
from .viewfields import own_prefixes
from .viewmaps import NO_PEERS, GroupPeers, same_items


class PeerViews(Generic[NodeKey]):
    """The peers part of `ViewIndex`, which sets these attributes up (`_setup`)."""

    index: Index
    keys: tuple[NodeKey, ...]
    no_v4: frozenset[int]
    routes: RouteVisibility
    _plain: list[PeerView | None]
    _routers: int
    _groups: dict[int, list[int]]
    _group_full: dict[int, dict[NodeKey, PeerView]]
    _groups_seen: dict[int, tuple[object, object, bool]]
    _earlier: dict[int, Mapping[NodeKey, PeerView]]
    _lend: dict[NodeKey, PeerView]

    def _peer(self, viewer: int, j: int) -> PeerView:
        index, no_v4 = self.index, self.no_v4
        primary, exits = self.routes.visible_routes(viewer, j)
        return PeerView(
            allowed_ips=(*own_prefixes(index, j, no_v4, viewer), *primary, *exits),
            primary_routes=primary,
            tags=index.nodes[j].tags,
        )

    def _plain_peer(self, j: int) -> PeerView:
        """Peer ``j`` as every viewer with IPv4 sees it, when ``j`` has no routes."""
        pv = self._plain[j]
        if pv is None:
            pv = PeerView(
                allowed_ips=tuple(own_prefixes(self.index, j, self.no_v4)),
                primary_routes=(),
                tags=self.index.nodes[j].tags,
            )
            lent = self._lend.get(self.keys[j])
            pv = self._plain[j] = lent if lent == pv and lent is not None else pv
        return pv

    def peer_view(self, viewer: int, j: int) -> PeerView:
        """How ``viewer`` sees its peer ``j`` (as in its view's ``peers``)."""
        if viewer in self.no_v4 or self._routers >> j & 1:
            return self._peer(viewer, j)
        return self._plain_peer(j)

    def _peers(self, viewer: int, mask: int) -> Mapping[NodeKey, PeerView]:
        if not mask:
            # No peers: nothing to gather (a group of one would build the
            # viewer's own entry only to drop it), and the same empty mapping
            # as before, so the session sees at once that none changed.
            earlier = self._earlier.pop(viewer, None)
            return earlier if earlier is not None and not earlier else NO_PEERS
        keys = self.keys
        group = mask | 1 << viewer
        if viewer not in self.no_v4 and not group & self._routers:
            return self._group_peers(viewer, group)
        peers = self._peer_positions(viewer, mask)
        if viewer in self.no_v4:
            return {keys[j]: self._peer(viewer, j) for j in peers}
        # A peer without routes looks the same to every viewer: build it once.
        plain = self._plain
        if not all(map(is_not, map(plain.__getitem__, peers), repeat(None))):  # in C
            for j in [j for j in peers if plain[j] is None]:
                self._plain_peer(j)
        filled = cast("list[PeerView]", plain)  # for these peers
        earlier = self._earlier.pop(viewer, None)
        if (
            earlier is not None
            and len(earlier) == len(peers)
            and not mask & self._routers
            and all(map(is_, map(filled.__getitem__, peers), earlier.values()))  # in C
            and all(map(eq, earlier, map(keys.__getitem__, peers)))
        ):
            return earlier
        out = dict(zip(map(keys.__getitem__, peers), map(filled.__getitem__, peers), strict=True))
        # Routers' routes depend on the viewer (replacing keeps the order).
        for j in bits(mask & self._routers) if self._routers else ():
            out[keys[j]] = self._peer(viewer, j)
        return out

    def _group_peers(self, viewer: int, group: int) -> Mapping[NodeKey, PeerView]:
        """The peers of ``viewer`` in a group of nodes that see each other,
        none of them a router: the group's peers less itself. The group's
        entries are gathered once and shared by its views (`GroupPeers`: no
        copy per view), and whether a view's earlier peers can be handed on is decided
        once per group, not by a pass over every view's peers."""
        full = self._group_full.get(group)
        if full is None:
            members = bits(group)
            for j in members:
                if self._plain[j] is None:
                    self._plain_peer(j)
            keys, plain = self.keys, cast("list[PeerView]", self._plain)
            full = {keys[j]: plain[j] for j in members}
            if len(self._group_full) >= self.GROUPS_HELD:
                self._group_full.clear()
            self._group_full[group] = full
        earlier = self._earlier.pop(viewer, None)
        if isinstance(earlier, GroupPeers) and self._same_group(earlier.group, full):
            return earlier
        out = GroupPeers(full, self.keys[viewer])
        if earlier is not None and same_items(earlier, out):
            return earlier
        return out

    def _same_group(self, held: dict[Any, PeerView], full: dict[Any, PeerView]) -> bool:
        """Whether an earlier index's group entries are this group's (once per group)."""
        if held is full:
            return True
        seen = self._groups_seen.get(id(held))
        if seen is None or seen[0] is not held or seen[1] is not full:
            if len(self._groups_seen) >= self.GROUPS_HELD:
                self._groups_seen.clear()
            seen = self._groups_seen[id(held)] = (held, full, same_items(held, full))
        return seen[2]

    GROUPS_HELD = 1024

    def _peer_positions(self, i: int, mask: int) -> list[int]:
        """``bits(mask)`` of node ``i``'s peers. Decoding costs a pass over
        every node, so it is done once per group of nodes that see each
        other: they all have the same ``mask | 1 << i``."""
        group = mask | 1 << i
        members = self._groups.get(group)
        if members is None:
            if len(self._groups) >= self.GROUPS_HELD:
                self._groups.clear()
            members = self._groups[group] = bits(group)
        peers = members.copy()
        peers.remove(i)
        return peers
