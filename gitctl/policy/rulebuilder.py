"""ACLs and grants to filter rules (`filter.Rule`), already split per destination node.

Each policy rule is resolved once: its sources to rendered ``SrcIPs`` and a
member set, its destinations to the nodes whose addresses or routes they
cover.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from .addrs import INTERNET_RANGES, span
from .aliases import Index, Resolved
from .filter import DstPart, Rule
from .model import ALL_PORTS, WILDCARD, Alias, Grant, Policy, PortRange

SELF = Alias("autogroup", "autogroup:self")
# Capabilities that imply one back from destination to source: a Taildrive
# share needs the sharer to be known to the accessor, a relay its targets.
REVERSE_CAPS = {
    "tailscale.com/cap/drive": "tailscale.com/cap/drive-sharer",
    "tailscale.com/cap/relay": "tailscale.com/cap/relay-target",
}
INTERNET = Alias("autogroup", "autogroup:internet")


class RuleBuilder:
    def __init__(self, index: Index) -> None:
        self.index = index
        self.rules: list[Rule] = []
        # Every rule the policy makes, sent or not, in policy order: the same
        # sequence over any node set when no rule is per user (autogroup:self).
        self.slots: list[Rule] = []
        # Per autogroup:self entry (an ACL or grant naming it), the aliases of
        # its sources: each of their users gets a rule of that entry.
        self.self_sources: list[tuple[Alias, ...]] = []
        self._src_ips: dict[
            tuple[frozenset[int], tuple[str, ...]], tuple[tuple[str, ...], int]
        ] = {}
        self._self_srcs: dict[tuple[int, ...], tuple[tuple[str, ...], frozenset[str]]] = {}

    def _src(self, src: Iterable[Alias], posture: tuple[str, ...] = ()) -> Resolved:
        """The rule's sources, less the devices failing its posture (the rule's
        own ``srcPosture``, else the policy's ``defaultSrcPosture``)."""
        names = posture or self.index.policy.default_src_posture
        return self.index.with_posture(self.index.resolve_many(src), names)

    def _rule(
        self,
        src: Resolved,
        protos: tuple[int, ...] = (),
        caps: Mapping[str, tuple[Any, ...]] | None = None,
    ) -> Rule:
        key = (src.nodes, src.extra)
        known = self._src_ips.get(key)
        if known is None:
            own = self.index.node_texts(sorted(src.nodes))
            known = self._src_ips[key] = (tuple(dict.fromkeys([*own, *src.extra])), len(own))
        ips, own_n = known
        return Rule(src_ips=ips, src_members=src.members, protos=protos, caps=caps, src_n=own_n)

    def _add_dst(
        self,
        rule: Rule,
        alias: Alias,
        ports: tuple[PortRange, ...],
        host_form: bool = False,
        only: frozenset[int] | None = None,
    ) -> None:
        """Attach ``alias``'s addresses to every node they reach.

        ``host_form`` renders node addresses as /32 and /128 prefixes (CapGrant
        Dsts) instead of bare IPs (DstPorts).
        """
        index = self.index
        allowed = index.all if only is None else only
        own = index.host_prefix_table if host_form else index.ips
        if alias.kind == "wildcard":
            every = ("all", None) if only is None else None
            rule.add(DstPart(allowed, ports, own if host_form else None, "*", every))
            return
        if alias == INTERNET:
            texts: tuple[str, ...] = INTERNET_RANGES
            nodes: frozenset[int] = frozenset()
        else:
            r = index.resolve(alias)
            texts, nodes = r.extra, r.nodes
        picked = None if alias == INTERNET or only is not None else ("alias", alias)
        rule.add(DstPart(nodes & allowed, ports, own, source=picked))
        for text in texts:
            if host_form:
                # Capabilities go to nodes, never to subnets behind them.
                source = None if only is not None else ("in", text)
                rule.add(DstPart(index.nodes_in(text) & allowed, ports, own, source=source))
            else:
                source = None if only is not None else ("covering", text)
                nodes = index.covering(span(text)) & allowed
                rule.add(DstPart(nodes, ports, text=text, source=source))

    def _finish(self, rule: Rule) -> None:
        # An app grant reaches its destinations even when no source resolves.
        self.slots.append(rule)
        if rule.live:
            self.rules.append(rule)

    def add_acl(
        self,
        src: tuple[Alias, ...],
        dsts: Iterable[tuple[Alias, tuple[PortRange, ...]]],
        protos: tuple[int, ...],
        posture: tuple[str, ...] = (),
    ) -> None:
        dsts = list(dsts)
        resolved = self._src(src, posture)
        rule = self._rule(resolved, protos)
        rule.src_aliases = src
        for alias, ports in dsts:
            if alias != SELF:
                self._add_dst(rule, alias, ports)
        self._finish(rule)
        self_ports = [ports for alias, ports in dsts if alias == SELF]
        if self_ports:
            self._add_self(resolved, src, self_ports, protos)

    def _add_self(
        self,
        src: Resolved,
        src_aliases: tuple[Alias, ...],
        port_sets: list[tuple[PortRange, ...]],
        protos: tuple[int, ...],
        caps: Mapping[str, tuple[Any, ...]] | None = None,
    ) -> None:
        """autogroup:self: each user's devices may reach that user's devices."""
        index = self.index
        entry = len(self.self_sources)
        self.self_sources.append(src_aliases)
        by_user: dict[str, list[int]] = defaultdict(list)
        for i in sorted(src.members & index.members):
            email = index.email[i]
            assert email is not None
            by_user[email].append(i)
        for email, srcs in by_user.items():
            own = index.by_email[email.lower()]
            texts, src_key = self._self_src(srcs)
            rule = Rule(
                src_ips=texts,
                src_members=frozenset(srcs),
                protos=protos,
                caps=caps,
                src_n=len(texts),
                self_of=(entry, email),
                _src_key=src_key,
            )
            addrs = index.host_prefix_table if caps is not None else index.ips
            for ports in port_sets:
                rule.add(DstPart(own, ports, addrs))
            self._finish(rule)

    def _self_src(self, srcs: list[int]) -> tuple[tuple[str, ...], frozenset[str]]:
        """A user's sources under autogroup:self: one tuple and one set for
        all of the policy's autogroup:self entries. A node receiving two of
        them merges them by that set (`merge_rules`): found by identity, not
        compared text by text (at 200 nodes a user, 400 texts a view, a
        third of building it)."""
        key = tuple(srcs)
        held = self._self_srcs.get(key)
        if held is None:
            texts = tuple(self.index.node_texts(srcs))
            held = self._self_srcs[key] = (texts, frozenset(texts))
        return held

    def add_policy(self, policy: Policy) -> None:
        """Every ACL and grant of ``policy``, in order (and its default allow)."""
        for acl in policy.acls:
            self.add_acl(
                acl.src, ((d.alias, d.ports) for d in acl.dst), acl.protos, acl.src_posture
            )
        for grant in policy.grants:
            self.add_grant(grant)
        if policy.default_allow:
            self.add_acl((WILDCARD,), ((WILDCARD, (ALL_PORTS,)),), ())

    def add_grant(self, grant: Grant) -> None:
        resolved = self._src(grant.src, grant.src_posture)
        dsts = [d for d in grant.dst if d != SELF]
        has_self = len(dsts) != len(grant.dst)
        by_proto: dict[tuple[int, ...], list[PortRange]] = {}
        for cap in grant.ip:
            by_proto.setdefault(cap.protos, []).extend(cap.ports)
        via = self.index.resolve_many(grant.via).nodes if grant.via else None
        for protos, ports in by_proto.items():
            rule = self._rule(resolved, protos)
            rule.src_aliases = grant.src
            rule.via = via is not None
            for d in dsts:
                self._add_dst(rule, d, tuple(ports), only=via)
            self._finish(rule)
            if has_self:
                self._add_self(resolved, grant.src, [tuple(ports)], protos)
        if grant.app and via is not None:
            # Capabilities are not routed; the grant still makes the routers
            # and their routes known to the sources.
            rule = self._rule(resolved)
            rule.via = rule.hidden = True
            for d in dsts:
                self._add_dst(rule, d, (), only=via)
            self._finish(rule)
        elif grant.app and grant.src:
            self._add_app(resolved, grant.src, dsts, grant.app, has_self)
            reverse = {REVERSE_CAPS[c]: None for c in grant.app if c in REVERSE_CAPS}
            if reverse:
                back = self.index.resolve_many(dsts)
                self._add_app(back, tuple(dsts), list(grant.src), reverse, False)

    def _add_app(
        self,
        src: Resolved,
        src_aliases: tuple[Alias, ...],
        dsts: list[Alias],
        caps: Mapping[str, Any],
        has_self: bool,
    ) -> None:
        rule = self._rule(src, caps=caps)
        rule.src_aliases = src_aliases
        for d in dsts:
            self._add_dst(rule, d, (), host_form=True)
        self._finish(rule)
        if has_self:
            self._add_self(src, src_aliases, [()], (), caps)
