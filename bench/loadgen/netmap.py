"""What a tailscale client holds for one map stream, and how each MapResponse
changes it: tailscale's `control/controlclient/map.go` (`mapSession`,
`updatePeersStateFromResponse`) in Python.

Pure: a decoded MapResponse dict in, state updated; no I/O, no clock (the one
field that needs the client's time, `PeerSeenChange: true`, takes `now`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["PEER_KEYS", "ClientNetmap"]

# MapResponse fields that change the peer list; everything else is top-level
# state where absent (nil) means "unchanged".
PEER_KEYS = frozenset(
    {
        "Peers",
        "PeersChanged",
        "PeersRemoved",
        "PeersChangedPatch",
        "PeerSeenChange",
        "OnlineChange",
    }
)
# PeerChange field -> Node field it patches; a zero int (DERPRegion, Cap)
# means "unchanged", as map.go checks `!= 0`; the others are patched when set.
_PATCH_INT_FIELDS = {"DERPRegion": "HomeDERP", "Cap": "Cap"}
_PATCH_FIELDS = {
    "Endpoints": "Endpoints",
    "Key": "Key",
    "DiscoKey": "DiscoKey",
    "Online": "Online",
    "LastSeen": "LastSeen",
    "KeyExpiry": "KeyExpiry",
    "Capabilities": "Capabilities",
    "KeySignature": "KeySignature",
    "CapMap": "CapMap",
}


@dataclass
class ClientNetmap:
    """One map session's state: top-level fields, peers by node ID, user profiles.

    `apply` takes ownership of the message (nothing is copied), so pass a freshly
    decoded one. `keep`, when set, is the only peer fields stored: a load
    generator holding thousands of netmaps keeps what it measures
    (`decode.decoder_keeping` decodes only those).
    """

    keep: frozenset[str] | None = None
    top: dict[str, Any] = field(default_factory=dict)
    peers: dict[int, dict[str, Any]] = field(default_factory=dict)
    profiles: dict[int, dict[str, Any]] = field(default_factory=dict)
    messages: int = 0

    @property
    def node(self) -> dict[str, Any] | None:
        """The client's own Node, once the first map has arrived."""
        node = self.top.get("Node")
        return node if isinstance(node, dict) else None

    def apply(self, msg: Mapping[str, Any], now: str | None = None) -> None:
        """Apply one decoded MapResponse; `now` is the client's time (RFC 3339)."""
        self._apply(msg, now, self._kept)

    def apply_shared(self, msg: Mapping[str, Any], now: str | None = None) -> bool:
        """Apply a message other netmaps may hold too (decode.SharedDecodes),
        its peers decoded as `decode.decoder_keeping(self.keep)` does; False
        for a keep-alive.

        Each peer entry is copied (patches change this netmap's entries in
        place); every other value is stored as it is, and nothing changes those.
        """
        self._apply(msg, now, dict.copy)
        return not msg.get("KeepAlive")

    def _apply(
        self,
        msg: Mapping[str, Any],
        now: str | None,
        kept: Callable[[dict[str, Any]], dict[str, Any]],
    ) -> None:
        if msg.get("KeepAlive"):
            return
        self.messages += 1
        for key, value in msg.items():
            if key not in PEER_KEYS and key not in ("UserProfiles", "ControlTime"):
                if value is not None:
                    self.top[key] = value
        self._apply_peers(msg, now, kept)
        for profile in msg.get("UserProfiles") or ():
            self.profiles[profile["ID"]] = profile

    def _apply_peers(
        self,
        msg: Mapping[str, Any],
        now: str | None,
        kept: Callable[[dict[str, Any]], dict[str, Any]],
    ) -> None:
        if msg.get("Peers"):  # non-empty: the whole list, and no deltas alongside
            self.peers = {p["ID"]: kept(p) for p in msg["Peers"]}
            return
        for pid in msg.get("PeersRemoved") or ():
            self.peers.pop(pid, None)
        for peer in msg.get("PeersChanged") or ():
            self.peers[peer["ID"]] = kept(peer)
        for pid, seen in (msg.get("PeerSeenChange") or {}).items():
            if (peer := self.peers.get(int(pid))) is not None:
                if seen and now is not None:
                    peer["LastSeen"] = now
                elif not seen:
                    peer.pop("LastSeen", None)
        for pid, online in (msg.get("OnlineChange") or {}).items():
            if (peer := self.peers.get(int(pid))) is not None:
                peer["Online"] = online
        for patch in msg.get("PeersChangedPatch") or ():
            if (peer := self.peers.get(patch["NodeID"])) is None:
                continue
            for name, node_field in _PATCH_INT_FIELDS.items():
                if patch.get(name):
                    peer[node_field] = patch[name]
            for name, node_field in _PATCH_FIELDS.items():
                if patch.get(name) is not None:
                    peer[node_field] = patch[name]

    def _kept(self, peer: dict[str, Any]) -> dict[str, Any]:
        if self.keep is None:
            return peer
        # By the kept names, not the entry's: a few names against a whole
        # Node's worth of fields, for every peer of every map.
        return {k: peer[k] for k in self._keep_order if k in peer}

    @functools.cached_property
    def _keep_order(self) -> tuple[str, ...]:
        return tuple(sorted(self.keep or ()))

    def peer_with_key(self, node_key: str) -> dict[str, Any] | None:
        for peer in self.peers.values():
            if peer.get("Key") == node_key:
                return peer
        return None
