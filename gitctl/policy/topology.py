"""The tailnet the policy is compiled against: users and their nodes."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .times import parse_rfc3339


@dataclass(frozen=True, slots=True)
class TopologyUser:
    """A user. ``role`` is the tailnet role ("owner", "admin", "member", ...);
    None means "member". It counts only when the policy carries no role table
    of its own (see :mod:`gitctl.policy.roles`)."""

    id: int
    name: str
    email: str
    role: str | None = None


@dataclass(frozen=True, slots=True)
class TopologyNode:
    """One node. ``user`` is the owning user's name; a tagged node has no user.
    ``created`` is when it registered (None when unknown): among routers that
    serve the same subnet, the earliest registered is the primary.

    The posture facts (``os`` .. ``state_encrypted``) are what the client
    reports in its Hostinfo; None means it reported nothing, and then every
    posture condition on that attribute fails (except ``NOT SET``).
    """

    name: str
    hostname: str
    user: str | None
    tags: tuple[str, ...]
    ipv4: str | None
    ipv6: str | None
    routable_ips: tuple[str, ...] = ()
    approved_routes: tuple[str, ...] = ()
    os: str | None = None  # Hostinfo.OS: "linux", "windows", "macOS", ...
    os_version: str | None = None  # Hostinfo.OSVersion
    ts_version: str | None = None  # Hostinfo.IPNVersion, e.g. "1.96.4-t1234abcd"
    auto_update: bool | None = None  # Hostinfo.AllowsUpdate: auto-update is on
    state_encrypted: bool | None = None  # Hostinfo.StateEncrypted
    created: datetime | None = None  # tailcfg Node.Created
    # Reachable now. Only the primary-router election reads it: an offline
    # primary hands its subnets to the next online router (HA failover).
    online: bool = True


def _opt_bool(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


def _opt_str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


@dataclass(frozen=True, slots=True)
class Topology:
    """Users and nodes. Node order is the order of per-source SSH rules and
    breaks ties between routers registered at the same (or an unknown) time;
    it need not be registration order, which ``TopologyNode.created`` gives."""

    users: tuple[TopologyUser, ...]
    nodes: tuple[TopologyNode, ...]
    # The primaries last served, prefix -> node key (its name, or the key the
    # caller compiles with): a primary keeps its prefix while it is online, so
    # a router that comes back does not flap.
    primaries: Mapping[str, Hashable] = field(default_factory=dict)
    # Members a policy group gains at run time, group name -> user emails: the
    # groups the identity provider gave each user at their last login. They
    # add to the members the policy file declares and never remove any.
    groups: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

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
                created=_created(name, n.get("created")),
                os=_opt_str(n.get("os")),
                os_version=_opt_str(n.get("os_version")),
                ts_version=_opt_str(n.get("ts_version")),
                auto_update=_opt_bool(n.get("auto_update")),
                state_encrypted=_opt_bool(n.get("state_encrypted")),
            )
            for name, n in items
        )
        return cls(users=users, nodes=nodes, groups=runtime_groups(doc.get("groups") or {}))


def runtime_groups(doc: Mapping[str, Any]) -> dict[str, tuple[str, ...]]:
    """Group memberships as JSON (``{"group:eng": ["alice@example.com"]}``) checked
    and normalised: group names start with ``group:``, members are emails."""
    if not isinstance(doc, Mapping):
        raise ValueError("groups: expected an object of group name -> list of emails")
    out: dict[str, tuple[str, ...]] = {}
    for name, members in doc.items():
        if not isinstance(name, str) or not name.startswith("group:"):
            raise ValueError(f'groups: "{name}": group names must start with "group:"')
        if not isinstance(members, list) or not all(
            isinstance(m, str) and "@" in m for m in members
        ):
            raise ValueError(f'groups["{name}"]: expected a list of emails')
        out[name] = tuple(sorted({m.lower() for m in members}))
    return out


def _created(name: str, value: Any) -> datetime | None:
    if value is None:
        return None
    try:
        return parse_rfc3339(value)
    except ValueError as exc:
        raise ValueError(f"node {name}: created: {exc}") from None
