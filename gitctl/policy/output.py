"""What the compiler hands out: per-node views of the tailnet, keyed by node.

A node's key is what its caller names it by: gitctl keys nodes by their names,
the server by their integer ids (``compile_tailnet(..., keys=...)``). Views,
peers, visibility and primaries all speak that one key, so no caller converts.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Generic, Protocol, TypeVar

NodeKey = TypeVar("NodeKey", bound=Hashable)
"""The caller's name for a node (a str for gitctl, an int id for the server)."""

_NO_CAPS: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class PeerView:
    """How one node sees one of its peers."""

    allowed_ips: tuple[str, ...]
    primary_routes: tuple[str, ...]
    tags: tuple[str, ...]
    cap_map: Mapping[str, Any] = field(default_factory=lambda: _NO_CAPS)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"AllowedIPs": list(self.allowed_ips)}
        if self.primary_routes:
            out["PrimaryRoutes"] = list(self.primary_routes)
        if self.tags:
            out["Tags"] = list(self.tags)
        if self.cap_map:
            out["CapMap"] = dict(self.cap_map)
        return out


@dataclass(frozen=True, slots=True)
class NodeView(Generic[NodeKey]):
    """What one node may see and accept: its packet filter, SSH policy,
    peers (by key), capabilities, addresses and the routes it is primary for."""

    packet_filter_rules: Sequence[Mapping[str, Any]]
    ssh_policy: Mapping[str, Any]
    peers: Mapping[NodeKey, PeerView]
    self_cap_map: Mapping[str, Any]
    self_allowed_ips: tuple[str, ...]
    self_primary_routes: tuple[str, ...]
    whois_cap_map: Mapping[str, Any]

    def to_json(self, label: Mapping[NodeKey, str] | None = None) -> dict[str, Any]:
        """As gitctl prints it; ``label`` names peers whose keys are not text."""
        return {
            "packet_filter_rules": [dict(r) for r in self.packet_filter_rules],
            "ssh_policy": dict(self.ssh_policy),
            "peers": {
                (label[k] if label is not None else str(k)): p.to_json()
                for k, p in self.peers.items()
            },
            "self_cap_map": dict(self.self_cap_map),
            "self_allowed_ips": list(self.self_allowed_ips),
            "self_primary_routes": list(self.self_primary_routes),
            "whois_cap_map": dict(self.whois_cap_map),
        }


class Visibility(Protocol[NodeKey]):
    """Who sees whom, answered without building any node's full view."""

    def peer_keys(self, key: NodeKey) -> list[NodeKey]: ...

    def primaries(self) -> dict[str, NodeKey]: ...


@dataclass(frozen=True, slots=True)
class CompiledTailnet(Generic[NodeKey]):
    """``nodes`` builds each view on first access (and keeps it).

    ``changed``: after a compile that reused an earlier one, the nodes whose
    views may differ from it (None: any of them).
    """

    nodes: Mapping[NodeKey, NodeView[NodeKey]]
    visibility: Visibility[NodeKey] | None = field(default=None, compare=False, repr=False)
    changed: frozenset[NodeKey] | None = field(default=None, compare=False, repr=False)

    def peer_keys(self, key: NodeKey) -> list[NodeKey]:
        """The nodes ``key`` sees, which are the nodes that see it."""
        if self.visibility is not None:
            return self.visibility.peer_keys(key)
        return list(self.nodes[key].peers)

    def primaries(self) -> dict[str, NodeKey]:
        """Prefix -> the node primary for it now (pass it back as the next
        compile's `Topology.primaries`, so the election does not flap)."""
        return self.visibility.primaries() if self.visibility is not None else {}

    def to_json(self) -> dict[str, Any]:
        return {"nodes": {str(k): v.to_json() for k, v in self.nodes.items()}}
