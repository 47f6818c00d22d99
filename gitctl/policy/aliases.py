"""Resolving policy names (users, groups, tags, hosts, autogroups) to nodes and addresses.

The :class:`Index` is built once per compile: dictionaries from user, tag and
IP to node indices, so each alias resolves in time proportional to its
members, never by scanning rules against node pairs.
"""

from __future__ import annotations

import copy
import ipaddress
from bisect import bisect_left, bisect_right
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .addrs import (
    TAILSCALE_RANGES,
    Span,
    addr_text,
    address_point,
    host_prefix,
    is_exit_route,
    span,
)
from .model import Alias, Policy
from .posture import Value, meets, node_facts
from .roles import role_emails
from .topology import Topology, TopologyNode


@dataclass(frozen=True, slots=True)
class Resolved:
    """What an alias stands for.

    ``nodes``: nodes whose own addresses are meant (rendered as bare IPs);
    ``extra``: other address texts (prefixes, ranges); ``members``: every node
    the alias covers, including nodes that merely sit inside ``extra``.
    """

    nodes: frozenset[int]
    extra: tuple[str, ...]
    members: frozenset[int]
    wildcard: bool = False


EMPTY = Resolved(frozenset(), (), frozenset())


class Index:
    # Per node (`_index_nodes`): the owner's email, addresses, and as /32
    # and /128 prefixes; and by address, tag and email.
    all: frozenset[int]
    email: list[str | None]
    ips: list[tuple[str, ...]]
    host_prefix_table: list[tuple[str, ...]]
    by_ip: dict[str, int]
    by_tag: dict[str, frozenset[int]]
    by_email: dict[str, frozenset[int]]
    tagged: frozenset[int]
    members: frozenset[int]

    def __init__(self, policy: Policy, topology: Topology, like: Index | None = None) -> None:
        """``like``: an index over the same nodes and users, maybe (a commit
        compiles a new policy over the very nodes the serving index has):
        what is per node is then copied from it, not worked out again."""
        self.policy = policy
        self.nodes: tuple[TopologyNode, ...] = topology.nodes
        self.users = topology.users
        self.runtime_groups = topology.groups
        self._sorted_ips: dict[int, tuple[list[int], list[int]]] | None = None
        self._facts: list[dict[str, Value]] | None = None
        self._posture_ok: dict[tuple[str, ...], frozenset[int]] = {}
        self._resolved: dict[Alias, Resolved] = {}
        self._alias_emails: dict[Alias, frozenset[str] | None] = {}
        # Filled in by the route stage: approved routes per node, and the
        # subnet routes that "*" stands for as a source.
        self.routes: list[tuple[str, ...]] = [()] * len(self.nodes)
        self.route_spans: list[tuple[Span, ...]] = [()] * len(self.nodes)
        self.routers: tuple[int, ...] = ()
        self.subnet_routes: tuple[str, ...] = ()
        # (the nodes compared in C: the server hands the same node objects)
        if like is not None and like.users == self.users and like.nodes == self.nodes:
            self._copy_nodes(like)
        else:
            self._index_nodes()

    def _copy_nodes(self, like: Index) -> None:
        """`_index_nodes` as ``like`` did it: its containers copied (an index
        that grows extends its own in place), the frozen sets shared."""
        self.all = like.all
        self.email = list(like.email)
        self.ips = like.ips[: len(self.nodes)]  # (it may have grown past its nodes)
        self.host_prefix_table = like.host_prefix_table[: len(self.nodes)]
        self.by_ip = dict(like.by_ip)
        self.by_tag, self.by_email = dict(like.by_tag), dict(like.by_email)
        self.tagged, self.members = like.tagged, like.members

    def _index_nodes(self) -> None:
        """Per node: its owner's email, addresses, tags."""
        email_of = {u.name: u.email for u in self.users}
        self.all = frozenset(range(len(self.nodes)))
        by_tag: dict[str, set[int]] = defaultdict(set)
        by_email: dict[str, set[int]] = defaultdict(set)
        self.email = []
        self.ips = []
        self.host_prefix_table = []
        self.by_ip = {}
        tagged: list[int] = []
        members: list[int] = []
        for i, n in enumerate(self.nodes):
            if n.tags:
                tagged.append(i)
                for t in n.tags:
                    by_tag[t].add(i)
            email = None if n.tags or n.user is None else email_of.get(n.user, n.user)
            self.email.append(email)
            if email is not None:
                members.append(i)
                by_email[email.lower()].add(i)
            # (no generator per node: a leave builds this index again)
            v4, v6 = n.ipv4, n.ipv6
            ips = (v4, v6) if v4 and v6 else (v4,) if v4 else (v6,) if v6 else ()
            self.ips.append(ips)
            self.host_prefix_table.append(tuple(map(host_prefix, ips)))
            for ip in ips:
                self.by_ip[ip] = i
        self.by_tag = {k: frozenset(v) for k, v in by_tag.items()}
        self.by_email = {k: frozenset(v) for k, v in by_email.items()}
        self.tagged = frozenset(tagged)
        self.members = frozenset(members)

    def set_routes(self, routes: list[tuple[str, ...]]) -> None:
        self.routes = routes
        self.routers = tuple(i for i, rs in enumerate(routes) if rs)
        self.route_spans = [()] * len(routes)
        for i in self.routers:
            self.route_spans[i] = tuple(map(span, routes[i]))
        self._resolved.clear()  # wildcards and prefixes depend on the routes
        seen: dict[str, None] = {}
        for rs in routes:
            for r in rs:
                if r not in ("0.0.0.0/0", "::/0"):
                    seen[r] = None
        self.subnet_routes = tuple(seen)

    def extended(self, fresh: Index) -> Index:
        """This index with ``fresh``'s nodes (joining without routes) appended:
        each alias resolved so far gains the newcomers that ``fresh`` resolves
        it to (aliases resolve node by node)."""
        n, new = len(self.nodes), copy.copy(self)

        def grow(have: frozenset[int], more: frozenset[int]) -> frozenset[int]:
            return have.union([n + j for j in more]) if more else have

        new.nodes = (*self.nodes, *fresh.nodes)
        new.all = self.all.union(range(n, len(new.nodes)))  # a copy, not n hashed again
        new.email = [*self.email, *fresh.email]
        if len(self.ips) == n and len(self.host_prefix_table) == n:
            # Shared: rules that do not reach the newcomers keep rendering from
            # them, and this index never reads past its own nodes.
            self.ips.extend(fresh.ips)
            self.host_prefix_table.extend(fresh.host_prefix_table)
        else:  # grown already, by another index: copy
            new.ips = [*self.ips[:n], *fresh.ips]
            new.host_prefix_table = [*self.host_prefix_table[:n], *fresh.host_prefix_table]
        new.by_ip = {**self.by_ip, **{ip: n + j for ip, j in fresh.by_ip.items()}}
        new.by_tag = {**self.by_tag}
        for t, js in fresh.by_tag.items():
            new.by_tag[t] = grow(self.by_tag.get(t, EMPTY.nodes), js)
        new.by_email = {**self.by_email}
        for e, js in fresh.by_email.items():
            new.by_email[e] = grow(self.by_email.get(e, EMPTY.nodes), js)
        new.tagged = grow(self.tagged, fresh.tagged)
        new.members = grow(self.members, fresh.members)
        new.routes = [*self.routes, *fresh.routes]
        new.route_spans = [*self.route_spans, *fresh.route_spans]
        new._sorted_ips, new._facts, new._posture_ok = None, None, {}
        resolved = {}
        for alias, r in list(self._resolved.items()):
            if not self._may_name(alias, fresh):
                resolved[alias] = r
                continue
            more = fresh.resolve(alias)
            if more.members:
                r = Resolved(
                    grow(r.nodes, more.nodes), r.extra, grow(r.members, more.members), r.wildcard
                )
            resolved[alias] = r
        new._resolved = resolved
        return new

    def resolve_known(self, fresh: Index) -> None:
        """Resolve in ``fresh`` (newcomers' own index) every alias resolved
        here that may name them: what `extended` reads of it, and what
        `gitctl.policy.extend` reads from its ``resolutions``."""
        for alias in list(self._resolved):
            if self._may_name(alias, fresh):
                fresh.resolve(alias)

    def _may_name(self, alias: Alias, fresh: Index) -> bool:
        emails = self._emails_of(alias) if alias.kind in ("user", "group") else None
        # most aliases name a few users: those of other users are skipped quickly
        return emails is None or not fresh.by_email.keys().isdisjoint(emails)

    def _emails_of(self, alias: Alias) -> frozenset[str] | None:
        """The (lower case) emails a user or group alias can name; None (any:
        resolve it) when it names users by pattern or holds other aliases.
        Remembered per policy and groups (indexes grown from this one share it)."""
        if alias not in self._alias_emails:
            self._alias_emails[alias] = self._list_emails(alias)
        return self._alias_emails[alias]

    def _list_emails(self, alias: Alias) -> frozenset[str] | None:
        if alias.kind == "user" and not alias.value.startswith("*@"):
            return frozenset({alias.value.lower()})
        if alias.kind != "group":
            return None
        out = {e.lower() for e in self.runtime_groups.get(alias.value, ())}
        for member in self.policy.groups.get(alias.value, ()):
            emails = self._list_emails(member)
            if emails is None:
                return None
            out |= emails
        return frozenset(out)

    # -- identity --------------------------------------------------------

    def user_nodes(self, pattern: str) -> frozenset[int]:
        pattern = pattern.lower()
        if pattern.startswith("*@"):
            domain = pattern[1:]
            return frozenset(i for e, ns in self.by_email.items() if e.endswith(domain) for i in ns)
        return self.by_email.get(pattern, frozenset())

    def _ip_order(self, version: int) -> tuple[list[int], list[int]]:
        """Node addresses of one IP version, sorted, with their nodes."""
        if self._sorted_ips is None:
            pairs: dict[int, list[tuple[int, int]]] = {4: [], 6: []}
            for i, ips in enumerate(self.ips[: len(self.nodes)]):  # the table may be shared
                for ip in ips:
                    v, point = address_point(ip)
                    pairs[v].append((point, i))
            self._sorted_ips = {}
            for v, items in pairs.items():
                items.sort()
                self._sorted_ips[v] = ([a for a, _ in items], [i for _, i in items])
        return self._sorted_ips[version]

    def _nodes_within(self, s: Span) -> frozenset[int]:
        addrs, nodes = self._ip_order(s.version)
        return frozenset(nodes[bisect_left(addrs, s.lo) : bisect_right(addrs, s.hi)])

    def nodes_in(self, prefix: str) -> frozenset[int]:
        s = span(prefix)
        if s.hi == s.lo:
            node = self.by_ip.get(str(ipaddress.ip_address(s.lo)))
            return frozenset() if node is None else frozenset({node})
        return self._nodes_within(s)

    def routers_into(self, prefix: str) -> frozenset[int]:
        """Routers whose subnet routes overlap ``prefix``: traffic from there
        reaches the tailnet through them."""
        s = span(prefix)
        return frozenset(
            i
            for i in self.routers
            if any(s.overlaps(span(r)) for r in self.routes[i] if not is_exit_route(r))
        )

    def covering(self, s: Span) -> frozenset[int]:
        """Nodes traffic to ``s`` may be delivered to (own address or route)."""
        return self._nodes_within(s) | frozenset(
            i for i in self.routers if any(s.overlaps(x) for x in self.route_spans[i])
        )

    def resolutions(self) -> Mapping[Alias, Resolved]:
        """Every alias resolved so far (by `resolve`)."""
        return self._resolved

    def resolve(self, alias: Alias) -> Resolved:
        # Rules name the same groups and tags over and over: resolve each once.
        r = self._resolved.get(alias)
        if r is None:
            r = self._resolved[alias] = self._resolve(alias)
        return r

    def _resolve(self, alias: Alias) -> Resolved:
        kind, value = alias.kind, alias.value
        if kind == "wildcard":
            return Resolved(frozenset(), TAILSCALE_RANGES + self.subnet_routes, self.all, True)
        if kind == "user":
            ns = self.user_nodes(value)
            return Resolved(ns, (), ns)
        if kind == "group":
            declared = self.resolve_many(self.policy.groups.get(value, ()))
            extra = self.runtime_groups.get(value, ())
            if not extra:
                return declared
            added = frozenset(i for e in extra for i in self.user_nodes(e))
            return Resolved(
                declared.nodes | added, declared.extra, declared.members | added, declared.wildcard
            )
        if kind == "tag":
            ns = self.by_tag.get(value, frozenset())
            return Resolved(ns, (), ns)
        if kind == "ipset":
            return self.resolve_many(Alias("prefix", p) for p in self.policy.ipsets.get(value, ()))
        if kind in ("host", "prefix"):
            prefix = self.policy.hosts[value] if kind == "host" else value
            return Resolved(
                frozenset(), (addr_text(prefix),), self.nodes_in(prefix) | self.routers_into(prefix)
            )
        return self._autogroup(value)

    def _autogroup(self, name: str) -> Resolved:
        if name == "autogroup:member":
            return Resolved(self.members, (), self.members)
        if name == "autogroup:tagged":
            return Resolved(self.tagged, (), self.tagged)
        if name == "autogroup:danger-all":
            return Resolved(frozenset(), ("*",), self.all, True)
        role = name.removeprefix("autogroup:")
        emails = role_emails(self.policy, self.users, role)
        if emails is not None:
            ns = frozenset(i for e in emails for i in self.by_email.get(e, ()))
            return Resolved(ns, (), ns)
        return EMPTY

    # -- device posture --------------------------------------------------

    def facts(self, node: int) -> dict[str, Value]:
        if self._facts is None:
            self._facts = [node_facts(n) for n in self.nodes]
        return self._facts[node]

    def posture_nodes(self, names: tuple[str, ...]) -> frozenset[int]:
        """Nodes meeting at least one of the named postures."""
        ok = self._posture_ok.get(names)
        if ok is None:
            postures = self.policy.postures
            ok = self._posture_ok[names] = frozenset(
                i for i in self.all if meets(postures, names, self.facts(i))
            )
        return ok

    def with_posture(self, src: Resolved, names: tuple[str, ...]) -> Resolved:
        """``src`` narrowed to the devices meeting a posture: a source that is not
        a device (a subnet, the internet) has no posture and is dropped."""
        if not names:
            return src
        if src.wildcard:
            covered = self.all
        else:
            covered = src.nodes.union(*(self._nodes_within(span(t)) for t in src.extra))
        ok = covered & self.posture_nodes(names)
        return Resolved(ok, (), ok)

    def resolve_many(self, aliases: Iterable[Alias]) -> Resolved:
        given = tuple(aliases)
        if len(given) == 1:
            return self.resolve(given[0])
        nodes: set[int] = set()
        extra: dict[str, None] = {}
        members: set[int] = set()
        wildcard = False
        for a in given:
            r = self.resolve(a)
            nodes |= r.nodes
            extra.update(dict.fromkeys(r.extra))
            members |= r.members
            wildcard = wildcard or r.wildcard
        return Resolved(frozenset(nodes), tuple(extra), frozenset(members), wildcard)

    def node_texts(self, nodes: Iterable[int]) -> list[str]:
        return [ip for i in nodes for ip in self.ips[i]]

    def host_prefixes(self, node: int) -> list[str]:
        """The node's addresses as /32 and /128 prefixes (a fresh list)."""
        return list(self.host_prefix_table[node])
