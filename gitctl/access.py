"""Effective access: what a compiled tailnet lets each device do, and how two of them differ.

A compiled tailnet says, per destination node, which source addresses may send to which
ports (packet filter), who may log in over SSH as which local user (SSH policy), and which
peers each node is told about. `effective_access` turns that into facts between *endpoints*
(a topology node, or an address range outside the tailnet), and `diff_access` compares two
of them and names the changes the way people think about the policy: by user, tag or group
rather than by address, collapsing a change that every device of an identity shares.
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from gitctl.policy import CompiledTailnet, Topology, TopologyNode

__all__ = [
    "DEFAULT_PROTOS",
    "Access",
    "AccessDiff",
    "Endpoint",
    "Label",
    "PeerChange",
    "ReachChange",
    "SELF",
    "SshChange",
    "diff_access",
    "effective_access",
]

# ("node", node name) or ("net", address range outside the tailnet)
Endpoint = tuple[str, str]
# protocol number -> disjoint, sorted (first, last) port ranges
PortSet = Mapping[int, tuple[tuple[int, int], ...]]

ICMP_PROTOS = frozenset({1, 58})  # ports mean nothing to ICMP: any entry allows it whole
DEFAULT_PROTOS = (6, 17, 1, 58)  # a filter rule without IPProto: TCP, UDP, ICMP, ICMPv6
FULL = (0, 65535)
TAILNET_RANGES = (
    ipaddress.ip_network("100.64.0.0/10"),
    ipaddress.ip_network("fd7a:115c:a1e0::/48"),
)


@dataclass(frozen=True, slots=True)
class Access:
    reach: Mapping[tuple[Endpoint, Endpoint], PortSet]  # (source, destination) -> ports
    ssh: frozenset[tuple[Endpoint, Endpoint, str, str, str]]  # src, dst, login, local, action
    peers: frozenset[tuple[Endpoint, Endpoint]]  # (viewer, peer it is told about)


# -- address matching ----------------------------------------------------------------------


# An address as (IP version, integer value); a range as (version, first, last).
_Addr = tuple[int, int]
_Range = tuple[int, int, int]


def _addr(text: str) -> _Addr:
    a = ipaddress.ip_address(text)
    return a.version, int(a)


@lru_cache(maxsize=4096)
def _ranges(text: str) -> tuple[_Range, ...] | None:
    """The address range(s) a SrcIPs/DstPorts text stands for; None for "*"."""
    if text == "*":
        return None
    try:
        if "-" in text:
            first, _, last = text.partition("-")
            (version, lo), (_, hi) = _addr(first), _addr(last)
            return ((version, lo, hi),)
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        return ()
    return ((net.version, int(net.network_address), int(net.broadcast_address)),)


def _covers(text: str, addr: _Addr) -> bool:
    ranges = _ranges(text)
    if ranges is None:
        return True
    version, value = addr
    return any(v == version and lo <= value <= hi for v, lo, hi in ranges)


_TAILNET = [_ranges(str(net)) or () for net in TAILNET_RANGES]


def _outside_tailnet(text: str) -> bool:
    """Whether a source text names addresses beyond the tailnet's own (a subnet, the
    internet): such sources become endpoints of their own."""
    ranges = _ranges(text)
    if not ranges:
        return False
    v, lo, hi = ranges[0]
    return not any(tv == v and tlo <= lo and hi <= thi for r in _TAILNET for tv, tlo, thi in r)


class _Addresses:
    def __init__(self, nodes: Sequence[TopologyNode]) -> None:
        self.of: dict[str, list[_Addr]] = {
            n.name: [_addr(ip) for ip in (n.ipv4, n.ipv6) if ip] for n in nodes
        }
        self.node_of: dict[str, str] = {ip: n.name for n in nodes for ip in (n.ipv4, n.ipv6) if ip}
        self._matched: dict[tuple[str, ...], frozenset[Endpoint]] = {}

    def sources(self, texts: Sequence[str]) -> frozenset[Endpoint]:
        key = tuple(texts)
        found = self._matched.get(key)
        if found is None:
            eps = {
                ("node", name)
                for name, addrs in self.of.items()
                if any(_covers(t, a) for t in texts for a in addrs)
            }
            eps |= {("net", t) for t in texts if t != "*" and _outside_tailnet(t)}
            found = self._matched[key] = frozenset(eps)
        return found

    def is_own(self, node: str, text: str) -> bool:
        return any(_covers(text, a) for a in self.of.get(node, ()))


# -- port sets -----------------------------------------------------------------------------


def _normalize(ranges: Iterable[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    out: list[tuple[int, int]] = []
    for first, last in sorted(ranges):
        if out and first <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], last))
        else:
            out.append((first, last))
    return tuple(out)


def _subtract(
    a: tuple[tuple[int, int], ...], b: tuple[tuple[int, int], ...]
) -> list[tuple[int, int]]:
    out = []
    for first, last in a:
        pieces = [(first, last)]
        for bf, bl in b:
            pieces = [
                piece
                for pf, pl in pieces
                for piece in ((pf, min(pl, bf - 1)), (max(pf, bl + 1), pl))
                if piece[0] <= piece[1]
            ]
        out += pieces
    return out


def _port_minus(a: PortSet, b: PortSet) -> list[tuple[int, int, int]]:
    """(protocol, first, last) ranges in `a` but not in `b`."""
    return [
        (proto, first, last)
        for proto, ranges in a.items()
        for first, last in _subtract(ranges, b.get(proto, ()))
    ]


# -- building ------------------------------------------------------------------------------


def _reach(
    compiled: CompiledTailnet[str], addrs: _Addresses
) -> dict[tuple[Endpoint, Endpoint], PortSet]:
    raw: dict[tuple[Endpoint, Endpoint], dict[int, list[tuple[int, int]]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for dst_name, view in compiled.nodes.items():
        for rule in view.packet_filter_rules:
            if "DstPorts" not in rule:
                continue  # app capabilities (grants' "app"), not packets
            srcs = addrs.sources(rule.get("SrcIPs") or ())
            protos = tuple(rule.get("IPProto") or DEFAULT_PROTOS)
            for entry in rule["DstPorts"]:
                ip = str(entry["IP"])
                ports = entry.get("Ports") or {}
                span = (int(ports.get("First", 0)), int(ports.get("Last", 65535)))
                own = ip == "*" or addrs.is_own(dst_name, ip)
                dst: Endpoint = ("node", dst_name) if own else ("net", ip)
                for src in srcs:
                    per_proto = raw[(src, dst)]
                    for proto in protos:
                        per_proto[proto].append(FULL if proto in ICMP_PROTOS else span)
    return {
        pair: {proto: _normalize(r) for proto, r in per_proto.items()}
        for pair, per_proto in raw.items()
    }


def _ssh_action(action: Mapping[str, Any]) -> str | None:
    if action.get("accept"):
        return "accept"
    if action.get("holdAndDelegate"):
        return "check"
    return None  # reject: decides the login, grants nothing


def _ssh(
    compiled: CompiledTailnet[str], addrs: _Addresses
) -> set[tuple[Endpoint, Endpoint, str, str, str]]:
    out = set()
    every = frozenset(("node", n) for n in addrs.of)
    for dst_name, view in compiled.nodes.items():
        decided: set[tuple[Endpoint, str]] = set()
        for rule in (view.ssh_policy or {}).get("rules") or ():
            srcs: set[Endpoint] = set()
            for p in rule.get("principals") or ():
                if p.get("any"):
                    srcs |= every
                elif p.get("nodeIP") in addrs.node_of:
                    srcs.add(("node", addrs.node_of[p["nodeIP"]]))
            action = _ssh_action(rule.get("action") or {})
            # First match wins per (source, login), as the client evaluates the rules.
            for login, local in (rule.get("sshUsers") or {}).items():
                for src in srcs:
                    if (src, login) in decided:
                        continue
                    decided.add((src, login))
                    if action is not None and local:
                        out.add((src, ("node", dst_name), login, local, action))
    return out


def effective_access(compiled: CompiledTailnet[str], topology: Topology) -> Access:
    addrs = _Addresses(topology.nodes)
    peers = {
        (("node", viewer), ("node", peer))
        for viewer, view in compiled.nodes.items()
        for peer in view.peers
    }
    return Access(_reach(compiled, addrs), frozenset(_ssh(compiled, addrs)), frozenset(peers))


# -- comparing -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, order=True)
class Label:
    """Who a change is about: kind is group, autogroup, wildcard, user, tag, node or net."""

    kind: str
    name: str


@dataclass(frozen=True, slots=True)
class ReachChange:
    gained: bool
    src: Label
    dst: Label
    ports: tuple[tuple[int, int, int], ...]  # (protocol, first, last), sorted


@dataclass(frozen=True, slots=True)
class SshChange:
    gained: bool
    src: Label
    dst: Label
    login: str  # the name asked for at login; "*" is any user the rule maps
    local_user: str  # the account it maps to; "=" means the same name
    action: str  # accept or check


@dataclass(frozen=True, slots=True)
class PeerChange:
    gained: bool
    viewer: Label
    peer: Label


@dataclass(frozen=True, slots=True)
class AccessDiff:
    reach: tuple[ReachChange, ...] = ()
    ssh: tuple[SshChange, ...] = ()
    peers: tuple[PeerChange, ...] = ()

    @property
    def changed(self) -> bool:
        return bool(self.reach or self.ssh or self.peers)


SELF = Label("autogroup", "autogroup:self")
# How sources are listed: the widest first.
KIND_ORDER = ("wildcard", "autogroup", "group", "user", "tag", "node", "net")

# (kind, gained, source, destination, detail)
_Fact = tuple[str, bool, Any, Any, tuple[Any, ...]]


def _facts(base: Access, head: Access) -> list[_Fact]:
    out: list[_Fact] = []
    for gained, a, b in ((True, head, base), (False, base, head)):
        for (src, dst), ports in a.reach.items():
            for piece in _port_minus(ports, b.reach.get((src, dst), {})):
                out.append(("reach", gained, src, dst, piece))
        for src, dst, *detail in a.ssh - b.ssh:
            out.append(("ssh", gained, src, dst, tuple(detail)))
        for viewer, peer in a.peers - b.peers:
            out.append(("peer", gained, viewer, peer, ()))
    return out


class _Namer:
    """Turns sets of endpoints into the fewest readable labels."""

    def __init__(self, topology: Topology, groups: Mapping[str, Sequence[str]]) -> None:
        emails = {u.name: u.email for u in topology.users}
        self.identity: dict[Endpoint, Label] = {}
        members: dict[Label, set[Endpoint]] = defaultdict(set)
        for n in topology.nodes:
            if n.tags:
                label = Label("tag", ", ".join(sorted(n.tags)))
            elif n.user is not None:
                label = Label("user", emails.get(n.user, n.user))
            else:
                label = Label("node", n.name)
            self.identity[("node", n.name)] = label
            members[label].add(("node", n.name))
        self.identities = _largest_first((k, frozenset(v)) for k, v in members.items())
        labels = set(members)
        users = {lb for lb in labels if lb.kind == "user"}
        by_email = {lb.name.lower(): lb for lb in users}
        named = [
            (Label("group", g), frozenset(by_email[m.lower()] for m in ms if m.lower() in by_email))
            for g, ms in groups.items()
        ]
        # On equal size, a named group reads better than "*", and "*" better than autogroups.
        self.groups = _largest_first(
            [
                *named,
                (Label("wildcard", "*"), frozenset(labels)),
                (Label("autogroup", "autogroup:member"), frozenset(users)),
                (
                    Label("autogroup", "autogroup:tagged"),
                    frozenset(lb for lb in labels if lb.kind == "tag"),
                ),
            ]
        )

    def labels(self, eps: Iterable[Endpoint], self_ep: Endpoint | None = None) -> list[Label]:
        """Labels for `eps`. `self_ep` (a change's source, when naming its destinations)
        counts as included: a device's access to itself is never in question."""
        rest = set(eps)
        chosen: list[Label] = []
        for label, members in self.identities:
            if rest & members and members <= rest | {self_ep}:
                chosen.append(label)
                rest -= members
        chosen += [Label("node" if k == "node" else "net", name) for k, name in sorted(rest)]
        self_label = self.identity.get(self_ep) if self_ep is not None else None
        # A source's own identity as a destination is what autogroup:self means.
        return [SELF if lb == self_label else lb for lb in self._grouped(set(chosen), self_label)]

    def _grouped(self, labels: set[Label], self_label: Label | None) -> list[Label]:
        chosen: list[Label] = []
        for group, members in self.groups:
            if len(members) >= 2 and len(labels & members) >= 2:
                if members <= labels | {self_label}:
                    chosen.append(group)
                    labels -= members
        return chosen + sorted(labels)


def _largest_first(
    items: Iterable[tuple[Label, frozenset[Any]]],
) -> list[tuple[Label, frozenset[Any]]]:
    numbered = sorted(enumerate(items), key=lambda pair: (-len(pair[1][1]), pair[0]))
    return [item for _, item in numbered]


def diff_access(
    base: Access,
    head: Access,
    topology: Topology,
    groups: Mapping[str, Sequence[str]] | None = None,
) -> AccessDiff:
    """What `head` allows that `base` did not, and the reverse, named by identity.

    `topology` is the one both were computed on; `groups` (policy groups, name -> member
    emails) lets a change shared by every member of a group be shown once, for the group.
    """
    namer = _Namer(topology, groups or {})
    # 1. per source endpoint: destinations to labels
    by_src: dict[tuple[str, bool, Endpoint, tuple[Any, ...]], set[Endpoint]] = defaultdict(set)
    for kind, gained, src, dst, detail in _facts(base, head):
        by_src[(kind, gained, src, detail)].add(dst)
    # 2. per destination label: sources to labels
    by_dst: dict[tuple[str, bool, Label, tuple[Any, ...]], set[Endpoint]] = defaultdict(set)
    for (kind, gained, src, detail), dsts in by_src.items():
        for dst_label in namer.labels(dsts, self_ep=src):
            by_dst[(kind, gained, dst_label, detail)].add(src)
    # 3. per (source label, destination label): details together
    merged: dict[tuple[str, bool, Label, Label], set[tuple[Any, ...]]] = defaultdict(set)
    for (kind, gained, dst_label, detail), srcs in by_dst.items():
        for src_label in namer.labels(srcs):
            merged[(kind, gained, src_label, dst_label)].add(detail)

    reach, ssh, peers = [], [], []
    for (kind, gained, src_label, dst_label), details in merged.items():
        if kind == "reach":
            reach.append(ReachChange(gained, src_label, dst_label, tuple(sorted(details))))
        elif kind == "ssh":
            ssh += [SshChange(gained, src_label, dst_label, *d) for d in sorted(details)]
        else:
            peers.append(PeerChange(gained, src_label, dst_label))

    def order(c: Any) -> tuple[Any, ...]:
        src = c.src if hasattr(c, "src") else c.viewer
        return (KIND_ORDER.index(src.kind), src.name, not c.gained, repr(c))

    return AccessDiff(
        reach=tuple(sorted(reach, key=order)),
        ssh=tuple(sorted(ssh, key=order)),
        peers=tuple(sorted(peers, key=order)),
    )
