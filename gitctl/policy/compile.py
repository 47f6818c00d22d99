"""compile_tailnet: a policy and the live node list in, per-node views out."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .addrs import Span, is_exit_route, span
from .aliases import Index
from .filter import Rule, RuleBuilder
from .model import ALL_PORTS, WILDCARD, Policy
from .policytests import check_policy_tests
from .nodeattrs import ipv4_disabled, self_cap_maps
from .routes import RouteTable, route_table
from .ssh import ssh_policies, check_ssh_domains
from .topology import Topology


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


@dataclass(frozen=True, slots=True)
class CompiledTailnet:
    nodes: Mapping[str, NodeView]

    def to_json(self) -> dict[str, Any]:
        return {"nodes": {name: v.to_json() for name, v in self.nodes.items()}}


def _merge_caps(into: dict[str, Any], caps: Mapping[str, Any]) -> None:
    for name, values in caps.items():
        if values is None:
            into.setdefault(name, None)
        elif into.get(name) is None:
            into[name] = list(values)
        else:
            into[name].extend(values)


def compile_tailnet(
    policy: Policy,
    topology: Topology,
    tailnet: Mapping[str, Any] | None = None,
    *,
    enforce_tests: bool = True,
) -> CompiledTailnet:
    """Per-node packet filters, SSH policies, peers and capabilities.

    Raises :class:`PolicyError` when the policy cannot apply to this tailnet
    (unknown SSH domains) or, with ``enforce_tests``, when its ``tests`` or
    ``sshTests`` fail ("test(s) failed"), as Tailscale refuses such a policy.
    Recompiling an accepted policy because nodes came or went may pass
    ``enforce_tests=False`` to keep serving it.
    """
    if enforce_tests:
        check_policy_tests(policy, topology)
    index = Index(policy, topology)
    table = route_table(policy, topology.nodes, topology.users)
    index.set_routes(list(table.enabled))
    check_ssh_domains(policy, index)

    builder = RuleBuilder(index)
    for acl in policy.acls:
        builder.add_acl(acl.src, ((d.alias, d.ports) for d in acl.dst), acl.protos)
    for grant in policy.grants:
        builder.add_grant(grant)
    if policy.default_allow:
        builder.add_acl((WILDCARD,), ((WILDCARD, (ALL_PORTS,)),), ())
    rules = builder.rules

    n = len(topology.nodes)
    per_node: list[list[Rule]] = [[] for _ in range(n)]
    visible = [0] * n
    for rule in rules:
        src_mask = rule.src_mask = _mask(rule.src_members)
        dst_mask = _mask(rule.dsts)
        for i in rule.dsts:
            per_node[i].append(rule)
            visible[i] |= src_mask
        for i in rule.src_members:
            visible[i] |= dst_mask

    ssh = ssh_policies(policy, index)
    caps = self_cap_maps(policy, index, tailnet)
    for i, extra in enumerate(ssh.visible):
        visible[i] |= extra
    routes = _RouteVisibility(index, table, per_node)
    no_v4 = ipv4_disabled(caps)

    views: dict[str, NodeView] = {}
    # A peer without routes looks the same to every viewer: build its view once.
    plain: dict[int, PeerView] = {}
    for i, node in enumerate(topology.nodes):
        peers: dict[str, PeerView] = {}
        mask = visible[i] & ~(1 << i)
        for j in _bits(mask):
            peer = topology.nodes[j]
            if not table.enabled[j] and i not in no_v4:
                view = plain.get(j)
                if view is None:
                    view = plain[j] = PeerView(
                        allowed_ips=tuple(_own_prefixes(index, j, no_v4)),
                        primary_routes=(), tags=peer.tags)
                peers[peer.name] = view
                continue
            primary, exits = routes.visible_routes(i, j)
            peers[peer.name] = PeerView(
                allowed_ips=(*_own_prefixes(index, j, no_v4, i), *primary, *exits),
                primary_routes=primary,
                tags=peer.tags,
            )
        views[node.name] = NodeView(
            packet_filter_rules=_merge_rules(r.render(i) for r in per_node[i] if not r.hidden),
            ssh_policy=ssh.policies[i],
            peers=peers,
            self_cap_map=caps[i],
            self_allowed_ips=(*_own_prefixes(index, i, no_v4), *table.primary[i],
                              *(r for r in table.enabled[i] if is_exit_route(r))),
            self_primary_routes=table.primary[i],
            whois_cap_map=_whois(index, per_node[i], mask),
        )
    return CompiledTailnet(nodes=views)


def _whois(index: Index, rules: list[Rule], peers: int) -> dict[str, Any]:
    """Per peer address: the app capabilities that peer holds toward this node."""
    # Peers holding the same grants share one merged map.
    cap_rules = [r for r in rules if r.caps is not None]
    held: dict[int, tuple[int, ...]] = {}
    for n, r in enumerate(cap_rules):
        for j in _bits(peers & r.src_mask):
            held[j] = (*held.get(j, ()), n)
    merged: dict[tuple[int, ...], dict[str, Any]] = {}
    whois: dict[str, Any] = {}
    for j in _bits(peers):
        key = held.get(j, ())
        if key not in merged:
            caps: dict[str, Any] = {}
            for n in key:
                _merge_caps(caps, cap_rules[n].caps or {})
            merged[key] = caps
        for ip in index.ips[j]:
            whois[ip] = merged[key] or None
    return whois


def _merge_rules(rendered: Iterable[dict[str, Any]]) -> tuple[dict[str, Any], ...]:
    """Rules with the same sources and protocols reach a node as one rule."""
    merged: dict[tuple[Any, ...], dict[str, Any]] = {}
    for n, r in enumerate(rendered):
        if "CapGrant" in r:
            merged[(n,)] = r
            continue
        kind = "DstPorts"
        key = (kind, frozenset(r["SrcIPs"]), tuple(r.get("IPProto") or ()))
        if key in merged:
            merged[key][kind] = merged[key][kind] + r[kind]
        else:
            merged[key] = r
    return tuple(merged.values())


class _RouteVisibility:
    """Which of a router's routes a viewer is told about.

    A viewer learns a route when it may send into it (a rule lets the viewer
    reach the router through that route), when it accepts traffic from it
    (one of its own rules has a source inside the route), or when it serves
    the same route (failover). Otherwise the route would only leak the
    subnet's existence. A viewer that reaches a route only through ``via``
    grants is shown it on the first of its via routers instead of the primary.
    """

    def __init__(self, index: Index, table: RouteTable, per_node: list[list[Rule]]) -> None:
        self.index = index
        self.table = table
        self.per_node = per_node
        self._senders: dict[tuple[int, str, bool], int] = {}
        self._accepts: dict[int, list[Span] | None] = {}
        self._via: dict[int, dict[str, int]] = {}
        self._primary_of = {r: i for i, rs in enumerate(table.primary) for r in rs}
        # (router, subnet route) pairs some via rule reaches, in registration order
        self._via_routes = [
            (i, r) for i, rs in enumerate(table.enabled) for r in rs
            if not is_exit_route(r) and any(rule.via for rule in per_node[i])
        ]

    def _may_send(self, router: int, route: str, via: bool) -> int:
        key = (router, route, via)
        if key not in self._senders:
            own = set(self.index.ips[router])
            mask = 0
            for rule in self.per_node[router]:
                if rule.via == via and _reaches(rule.dsts[router], own, span(route)):
                    mask |= rule.src_mask
            self._senders[key] = mask
        return self._senders[key]

    def _accepted(self, viewer: int) -> list[Span] | None:
        """Spans of the sources this viewer accepts (None: anything)."""
        if viewer not in self._accepts:
            texts = {t for rule in self.per_node[viewer] for t in rule.src_ips}
            self._accepts[viewer] = None if "*" in texts else [span(t) for t in texts]
        return self._accepts[viewer]

    def _via_choice(self, viewer: int) -> dict[str, int]:
        """Route -> the router a via-only viewer uses for it."""
        if viewer in self._via:
            return self._via[viewer]
        choice: dict[str, int] = {}
        for router, route in self._via_routes:
            if route not in choice and self._may_send(router, route, True) >> viewer & 1:
                choice[route] = router
        primary_of = self._primary_of
        for route in list(choice):
            p = primary_of.get(route)
            if p is not None and self._may_send(p, route, False) >> viewer & 1:
                del choice[route]
        self._via[viewer] = choice
        return choice

    def _shown(self, viewer: int, router: int, route: str) -> bool:
        if route in self.table.enabled[viewer]:
            return True
        if self._may_send(router, route, False) >> viewer & 1:
            return True
        accepted = self._accepted(viewer)
        r_span = span(route)
        return accepted is None or any(s.overlaps(r_span) for s in accepted)

    def visible_routes(self, viewer: int, router: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
        via = self._via_choice(viewer)
        primary = tuple(
            r for r in self.table.enabled[router]
            if not is_exit_route(r) and (
                via.get(r) == router
                or (r in self.table.primary[router] and r not in via
                    and self._shown(viewer, router, r))
            )
        )
        exits = tuple(r for r in self.table.enabled[router] if is_exit_route(r) and (
            self._shown(viewer, router, r) or self._may_send(router, r, True) >> viewer & 1))
        return primary, exits


def _reaches(entries: list[tuple[str, Any]], own: set[str], route: Span) -> bool:
    """Whether filter entries delivered to a router address the given route."""
    return any(t == "*" or (t not in own and span(t).overlaps(route)) for t, _ in entries)


def _own_prefixes(index: Index, node: int, no_v4: frozenset[int], viewer: int | None = None
                  ) -> list[str]:
    """A node's addresses as prefixes; IPv4 is left out when nodeAttrs disabled it
    on the node or on the viewer (which then speaks only IPv6 in the tailnet)."""
    prefixes = index.host_prefixes(node)
    if node in no_v4 or viewer in no_v4:
        return [p for p in prefixes if ":" in p]
    return prefixes


def _mask(items: Any) -> int:
    m = 0
    for i in items:
        m |= 1 << i
    return m


def _bits(mask: int) -> list[int]:
    """Indices of the set bits (one pass over the binary text: linear, unlike
    repeated big-int arithmetic)."""
    text = bin(mask)[:1:-1]
    out = []
    i = text.find("1")
    while i != -1:
        out.append(i)
        i = text.find("1", i + 1)
    return out
