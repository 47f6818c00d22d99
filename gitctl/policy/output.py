"""What the compiler hands out: per-node views of the tailnet."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class PeerView:
    allowed_ips: tuple[str, ...]
    primary_routes: tuple[str, ...]
    tags: tuple[str, ...]
    cap_map: Mapping[str, Any] | None = None

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
class NodeView:
    packet_filter_rules: tuple[Mapping[str, Any], ...]
    ssh_policy: Mapping[str, Any]
    peers: Mapping[str, PeerView]
    self_cap_map: Mapping[str, Any]
    self_allowed_ips: tuple[str, ...]
    self_primary_routes: tuple[str, ...]
    whois_cap_map: Mapping[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "packet_filter_rules": [dict(r) for r in self.packet_filter_rules],
            "ssh_policy": dict(self.ssh_policy),
            "peers": {name: p.to_json() for name, p in self.peers.items()},
            "self_cap_map": dict(self.self_cap_map),
            "self_allowed_ips": list(self.self_allowed_ips),
            "self_primary_routes": list(self.self_primary_routes),
            "whois_cap_map": dict(self.whois_cap_map),
        }


class Visibility(Protocol):
    """Who sees whom, answered without building any node's full view."""

    def peer_names(self, name: str) -> list[str]: ...


@dataclass(frozen=True, slots=True)
class CompiledTailnet:
    """``nodes`` builds each view on first access (and keeps it).

    ``changed``: after a compile that reused an earlier one, the nodes whose
    views may differ from it (None: any of them).
    """

    nodes: Mapping[str, NodeView]
    visibility: Visibility | None = field(default=None, compare=False, repr=False)
    changed: frozenset[str] | None = field(default=None, compare=False, repr=False)

    def peer_names(self, name: str) -> list[str]:
        """The nodes ``name`` sees, which are the nodes that see it."""
        if self.visibility is not None:
            return self.visibility.peer_names(name)
        return list(self.nodes[name].peers)

    def to_json(self) -> dict[str, Any]:
        return {"nodes": {name: v.to_json() for name, v in self.nodes.items()}}
