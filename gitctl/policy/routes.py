"""Subnet and exit routes: auto-approval, the routes in effect, primary routers."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from .addrs import is_exit_route, span
from .model import Alias, Policy
from .parse import parse_prefix
from .primary import elect_primaries
from .topology import TopologyNode, TopologyUser


def node_matches(policy: Policy, alias: Alias, node: TopologyNode, email: str | None) -> bool:
    """Whether ``alias`` (an approver or nodeAttrs target) names ``node``."""
    kind, value = alias.kind, alias.value
    if kind == "wildcard":
        return True
    if kind == "tag":
        return value in node.tags
    if node.tags:
        return kind == "autogroup" and value == "autogroup:tagged"
    if kind == "user":
        if email is None:
            return False
        if value.startswith("*@"):
            return email.lower().endswith(value[1:].lower())
        return email.lower() == value.lower()
    if kind == "group":
        return any(node_matches(policy, m, node, email) for m in policy.groups.get(value, ()))
    if kind == "autogroup":
        return value == "autogroup:member" and email is not None
    return False


def _email(node: TopologyNode, emails: Mapping[str, str]) -> str | None:
    if node.tags or node.user is None:
        return None
    return emails.get(node.user, node.user)


def auto_approved_routes(
    policy: Policy,
    node: TopologyNode,
    advertised: Iterable[str],
    users: Sequence[TopologyUser] = (),
) -> tuple[str, ...]:
    """The advertised routes that ``autoApprovers`` approve for ``node``.

    ``users`` maps the node's user name to an email; without it the node's
    ``user`` is compared to approvers as given.
    """
    email = _email(node, {u.name: u.email for u in users})
    auto = policy.auto_approvers
    out = []
    for route in advertised:
        norm = parse_prefix(route)
        if norm is None:
            continue
        if is_exit_route(norm):
            approvers: Iterable[Alias] = auto.exit_node
        else:
            s = span(norm)
            approvers = (a for p, aliases in auto.routes if span(p).contains(s) for a in aliases)
        if any(node_matches(policy, a, node, email) for a in approvers):
            out.append(route)
    return tuple(out)


@dataclass(frozen=True, slots=True)
class RouteTable:
    """Per node (topology order): routes in effect and routes it is primary for."""

    enabled: tuple[tuple[str, ...], ...]
    primary: tuple[tuple[str, ...], ...]


def route_table(
    policy: Policy,
    nodes: Sequence[TopologyNode],
    users: Sequence[TopologyUser],
    primaries: Mapping[str, int] | None = None,
) -> RouteTable:
    """A route is in effect when advertised and approved (by hand or by
    autoApprovers). Each subnet route has one primary: the earliest
    registered node serving it (by ``created``, then node order), as
    :func:`elect_primaries` picks it among the online routers, keeping the
    ``primaries`` last served (prefix -> position in ``nodes``) while they
    stay online; exit routes have no primary."""
    # Only nodes advertising routes can have any: the others cost no step but
    # this scan (a leave builds the table again over every node).
    none: tuple[str, ...] = ()
    enabled = [none] * len(nodes)
    advertising = [i for i, n in enumerate(nodes) if n.routable_ips]
    for i in advertising:
        n = nodes[i]
        auto = set(auto_approved_routes(policy, n, n.routable_ips, users))
        approved = set(n.approved_routes)
        enabled[i] = tuple(r for r in n.routable_ips if r in approved or r in auto)
    routers: dict[str, list[tuple[int, datetime | None]]] = {}
    for i in advertising:
        for r in enabled[i]:
            if not is_exit_route(r):
                routers.setdefault(r, []).append((i, nodes[i].created))
    previous = dict(primaries or {})
    online = frozenset(i for i in advertising if nodes[i].online)
    owner = elect_primaries(routers, online=online, previous=previous)
    primary = [none] * len(nodes)
    for i in advertising:
        primary[i] = tuple(r for r in enabled[i] if owner.get(r) == i)
    return RouteTable(enabled=tuple(enabled), primary=tuple(primary))
