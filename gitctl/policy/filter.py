"""ACLs and grants to packet-filter rules, already split per destination node.

Each policy rule is resolved once: its sources to rendered ``SrcIPs`` and a
member set, its destinations to the nodes whose addresses or routes they
cover. A node then receives only the destination entries that concern it,
which is how Tailscale reduces filters per node.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from .addrs import INTERNET_RANGES, span
from .aliases import Index, Resolved
from .model import ALL_PORTS, WILDCARD, Alias, Grant, Policy, PortRange

SELF = Alias("autogroup", "autogroup:self")
# Capabilities that imply one back from destination to source: a Taildrive
# share needs the sharer to be known to the accessor, a relay its targets.
REVERSE_CAPS = {
    "tailscale.com/cap/drive": "tailscale.com/cap/drive-sharer",
    "tailscale.com/cap/relay": "tailscale.com/cap/relay-target",
}
INTERNET = Alias("autogroup", "autogroup:internet")


@dataclass(frozen=True, slots=True)
class DstPart:
    """One destination of a rule: the nodes it reaches and what each is sent.

    With ``addrs`` a node receives its own addresses from that table (bare
    IPs or host prefixes); otherwise it receives ``text`` (``*``, a prefix
    or a range).
    """

    nodes: AbstractSet[int]
    ports: tuple[PortRange, ...]
    addrs: Sequence[Sequence[str]] | None = None
    text: str = ""
    # What picked ``nodes``, for growing the part by a newcomer: ("alias", an
    # alias: its nodes), ("covering", text) or ("in", text): the nodes whose
    # address it covers, ("all", None): every node; None: no node ever.
    source: tuple[str, Any] | None = None

    def entries(self, node: int) -> list[tuple[str, tuple[PortRange, ...]]]:
        if self.addrs is None:
            return [(self.text, self.ports)]
        return [(a, self.ports) for a in self.addrs[node]]


@dataclass
class Rule:
    """One filter rule before rendering: sources and, per node, what it may reach."""

    src_ips: tuple[str, ...]
    src_members: frozenset[int]
    protos: tuple[int, ...] = ()
    caps: Mapping[str, Any] | None = None
    # via: only the named routers carry it, and it steers route choice.
    via: bool = False
    # hidden: grants visibility (and routes) but is not sent as a filter rule.
    hidden: bool = False
    # src_members and dst_nodes as bitmasks, filled in by the compiler
    src_mask: int = 0
    dst_mask: int = 0
    # how many of src_ips are the source nodes' own addresses (they come first)
    src_n: int = 0
    # the aliases the sources resolve from (without posture); an autogroup:self
    # rule has none: it is one user's (``self_of``: its entry, see
    # `RuleBuilder.self_sources`, and the user's email)
    src_aliases: tuple[Alias, ...] = ()
    self_of: tuple[int, str] | None = None
    # destinations in policy order, and every node one of them reaches
    parts: list[DstPart] = field(default_factory=list)
    dst_nodes: set[int] = field(default_factory=set)
    _src_key: frozenset[str] | None = field(default=None, repr=False, compare=False)
    # What every node the rule reaches is sent alike (see `head`), and the
    # sources it was made from (a grown copy of the rule renders its own).
    _head: tuple[tuple[str, ...], dict[str, Any]] | None = field(
        default=None, repr=False, compare=False
    )

    @property
    def src_key(self) -> frozenset[str]:
        """The sources as a set: rules a node receives merge when these match."""
        key = self._src_key
        if key is None:
            key = self._src_key = frozenset(self.src_ips)
        return key

    @property
    def live(self) -> bool:
        """Whether the rule is sent at all: it has sources (or capabilities) and destinations."""
        return bool((self.src_ips or self.caps is not None) and self.dst_nodes)

    def add(self, part: DstPart) -> None:
        # An empty part is kept (it renders nothing) so that the parts of one
        # policy rule line up over any node set (see `gitctl.policy.extend`).
        self.parts.append(part)
        self.dst_nodes.update(part.nodes)

    def entries(self, node: int) -> list[tuple[str, tuple[PortRange, ...]]]:
        """(address text, ports) pairs (DstPorts) or address texts (CapGrant Dsts)."""
        out = []
        for part in self.parts:
            if node in part.nodes:
                out.extend(part.entries(node))
        return out

    def key(self, tables: Mapping[int, str]) -> tuple[Any, ...]:
        """Everything the rule gives any node, as a hashable value: two rules
        with equal keys (over the same nodes) render and reach alike.
        ``tables`` names the address tables a part may render from, by id."""
        caps = None if self.caps is None else json.dumps(self.caps, sort_keys=True)
        parts = tuple(
            (
                frozenset(p.nodes),
                p.ports,
                None if p.addrs is None else tables.get(id(p.addrs), str(id(p.addrs))),
                p.text,
            )
            for p in self.parts
            if p.nodes
        )
        return (self.src_ips, self.src_members, self.protos, caps, self.via, self.hidden, parts)

    def head(self) -> dict[str, Any]:
        """The part of the rendered rule that does not depend on the node:
        ``SrcIPs`` (and ``IPProto``), rendered once per rule, not once per
        node it reaches. Every node's rule holds these same list objects (a
        user's 200 nodes under autogroup:self share one ``SrcIPs``), so
        whoever encodes them can do it once, by identity; nobody mutates them."""
        held = self._head
        if held is None or held[0] is not self.src_ips:
            held = self._head = (self.src_ips, self._render_head())
        return held[1]

    def _render_head(self) -> dict[str, Any]:
        out: dict[str, Any] = {"SrcIPs": list(self.src_ips)}
        if self.protos and self.caps is None:
            out["IPProto"] = list(self.protos)
        return out

    def render(self, node: int) -> dict[str, Any]:
        head = self.head()
        out: dict[str, Any] = {"SrcIPs": head["SrcIPs"]}
        if self.caps is not None:
            out["CapGrant"] = [
                {
                    "Dsts": _unique(t for t, _ in self.entries(node)),
                    "CapMap": {k: None if v is None else list(v) for k, v in self.caps.items()},
                }
            ]
            return out
        # As `entries` orders them, without its list of pairs: a commit
        # renders every node's rules (a quarter of building its view).
        dst: list[dict[str, Any]] = []
        for part in self.parts:
            if node in part.nodes:
                ports = ports_json(part.ports)
                texts = (part.text,) if part.addrs is None else part.addrs[node]
                dst.extend([{"IP": text, "Ports": p} for text in texts for p in ports])
        out["DstPorts"] = dst
        if "IPProto" in head:
            out["IPProto"] = head["IPProto"]
        return out


@lru_cache(maxsize=1024)
def ports_json(ports: tuple[PortRange, ...]) -> tuple[dict[str, int], ...]:
    """A part's ``Ports`` values, made once per port set: every node's rule
    holds the same dicts (a rendered filter is a wire value nobody mutates),
    so a commit makes one object per destination entry, not two."""
    return tuple({"First": p.first, "Last": p.last} for p in ports)


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


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


class NodeRules:
    """Per node, the rules it receives, in policy order.

    Each node holds slot numbers into one list of every rule the policy made
    (``slots``), so an index for one more node shares the other nodes' lists
    even where their rules gained the newcomer (see `gitctl.policy.extend`)."""

    def __init__(
        self,
        slots: Sequence[Rule],
        lists: list[list[int]],
        self_sources: Sequence[tuple[Alias, ...]] = (),
    ) -> None:
        self.slots = slots
        self.lists = lists
        self.self_sources = self_sources  # see `RuleBuilder.self_sources`

    @classmethod
    def of(cls, builder: RuleBuilder, n: int) -> NodeRules:
        lists: list[list[int]] = [[] for _ in range(n)]
        for k, rule in enumerate(builder.slots):
            if rule.live:
                for i in rule.dst_nodes:
                    lists[i].append(k)
        return cls(builder.slots, lists, builder.self_sources)

    def __getitem__(self, node: int) -> list[Rule]:
        slots = self.slots
        return [slots[k] for k in self.lists[node]]

    def __len__(self) -> int:
        return len(self.lists)

    def __iter__(self) -> Iterator[list[Rule]]:
        return (self[i] for i in range(len(self.lists)))


class SlotUses:
    """Where each alias and address text picks the nodes of a rule slot:
    which slots' sources an alias feeds, and which parts (slot, part) each
    part source (`DstPart.source`) fills. Positions do not enter, so the
    indexes grown from one another under one policy share it."""

    def __init__(self, slots: Sequence[Rule]) -> None:
        self.src: dict[Alias, list[int]] = defaultdict(list)
        self.by_alias: dict[Alias, list[tuple[int, int]]] = defaultdict(list)
        self.other: dict[tuple[str, Any], list[tuple[int, int]]] = defaultdict(list)
        # (autogroup:self entry, user email) -> that user's rule of the entry
        self.self_slots: dict[tuple[int, str], int] = {}
        for k, rule in enumerate(slots):
            if rule.self_of is not None:
                self.self_slots[rule.self_of] = k
            for a in dict.fromkeys(rule.src_aliases):
                self.src[a].append(k)
            for p, part in enumerate(rule.parts):
                if part.source is None:
                    continue
                if part.source[0] == "alias":
                    self.by_alias[part.source[1]].append((k, p))
                else:
                    self.other[part.source].append((k, p))
