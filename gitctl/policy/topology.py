"""The tailnet the policy is compiled against: users and their nodes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class TopologyUser:
    """A user. ``role`` is the tailnet role ("owner", "admin", "member", ...);
    None means unknown, which counts as an admin (the corpus was captured with
    every user an admin) and, for the lowest id, as the owner."""

    id: int
    name: str
    email: str
    role: str | None = None


@dataclass(frozen=True, slots=True)
class TopologyNode:
    """One node. ``user`` is the owning user's name; a tagged node has no user."""

    name: str
    hostname: str
    user: str | None
    tags: tuple[str, ...]
    ipv4: str | None
    ipv6: str | None
    routable_ips: tuple[str, ...] = ()
    approved_routes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Topology:
    """Users and nodes. Node order is registration order: among routers that
    serve the same subnet, the earliest one is the primary."""

    users: tuple[TopologyUser, ...]
    nodes: tuple[TopologyNode, ...]

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Topology:
        users = tuple(
            TopologyUser(
                id=int(u.get("id", i)),
                name=str(u["name"]),
                email=str(u["email"]),
                role=u.get("role"),
            )
            for i, u in enumerate(doc.get("users") or ())
        )
        raw_nodes = doc.get("nodes") or {}
        items = (
            raw_nodes.items()
            if isinstance(raw_nodes, Mapping)
            else ((n["name"], n) for n in raw_nodes)
        )
        nodes = tuple(
            TopologyNode(
                name=str(name),
                hostname=str(n.get("hostname") or name),
                user=n.get("user"),
                tags=tuple(n.get("tags") or ()),
                ipv4=n.get("ipv4"),
                ipv6=n.get("ipv6"),
                routable_ips=tuple(n.get("routable_ips") or ()),
                approved_routes=tuple(n.get("approved_routes") or ()),
            )
            for name, n in items
        )
        return cls(users=users, nodes=nodes)
