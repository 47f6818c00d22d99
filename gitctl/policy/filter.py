"""A packet-filter rule before rendering, already split per destination node,
and its rendering into one node's ``FilterRule``.

`RuleBuilder` (`rulebuilder`) makes these rules from the policy's ACLs and
grants; a node receives only the destination entries that concern it, which
is how Tailscale reduces filters per node (`noderules`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from .model import Alias, PortRange


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
