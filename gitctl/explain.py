"""`gitctl explain`'s answer: may SRC reach DST (on a port, or over SSH), and by which rules.

SRC and DST name devices the way people do: a device name, a user (name or email), a group,
a tag, a host, an IP or a prefix. Each becomes endpoints (a device and one of its addresses,
or an address outside the tailnet); every (source, destination) pair is answered from the
compiler's per-rule resolution (`gitctl.rules`) and, for SSH, from the compiler's SSH policy
of each `ssh` rule on its own.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from gitctl.policy import Policy, Topology
from gitctl.policy.addrs import span
from gitctl.policy.aliases import Index
from gitctl.policy.expiry import in_force
from gitctl.policy.filter import Rule
from gitctl.policy.parse import Ctx, parse_alias
from gitctl.policy.policytests import _ssh_verdict
from gitctl.policy.ssh import SshIndex
from gitctl.rules import (
    PORTLESS,
    allows,
    build_index,
    covers,
    protos_of,
    resolve_rules,
    ssh_rule_policies,
)

__all__ = [
    "Answer",
    "Endpoint",
    "ExplainError",
    "PairAnswer",
    "RuleHit",
    "explain_ssh",
    "explain_traffic",
    "resolve_endpoints",
]


class ExplainError(Exception):
    """SRC or DST names nothing that can be explained; the message is for people."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    name: str  # the device name, or the address when no device has it
    node: int | None  # index of the device in the topology; None for an outside address
    address: str  # the address (or prefix) traffic comes from or goes to


@dataclass(frozen=True, slots=True)
class RuleHit:
    path: tuple[str | int, ...]  # ("acls", 0), ("ssh", 2)
    detail: str  # ports allowed ("tcp/22, udp/53"), or SSH action and logins


@dataclass(frozen=True, slots=True)
class PairAnswer:
    src: Endpoint
    dst: Endpoint
    allowed: bool
    rules: tuple[RuleHit, ...] = ()


@dataclass(frozen=True, slots=True)
class Answer:
    pairs: tuple[PairAnswer, ...] = field(default_factory=tuple)

    @property
    def verdict(self) -> str:
        allowed = [p.allowed for p in self.pairs]
        if allowed and all(allowed):
            return "allowed"
        return "partly allowed" if any(allowed) else "denied"


# -- naming ------------------------------------------------------------------------------


def _address(text: str) -> str | None:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        try:
            return str(ipaddress.ip_network(text, strict=False))
        except ValueError:
            return None


def _node_endpoints(index: Index, nodes: Sequence[int]) -> list[Endpoint]:
    return [Endpoint(index.nodes[i].name, i, index.ips[i][0]) for i in nodes if index.ips[i]]


def resolve_endpoints(
    text: str, policy: Policy, index: Index, topology: Topology, *, dst: bool = False
) -> list[Endpoint]:
    """What `text` names, most specific reading first: a device name, a user name, an address,
    then a policy name (email, group, tag, host, prefix, autogroup)."""
    by_name = {n.name: i for i, n in enumerate(index.nodes)}
    if text in by_name:
        return _node_endpoints(index, [by_name[text]])
    emails = {u.name: u.email for u in topology.users}
    if text in emails:
        text = emails[text]
    address = _address(text)
    if address is not None and "/" not in address:
        node = index.by_ip.get(address)
        if node is not None:
            return [Endpoint(index.nodes[node].name, node, address)]
    ctx = Ctx({"groups": policy.groups, "hosts": policy.hosts, "tagOwners": policy.tag_owners}, [])
    alias = parse_alias(text, ctx, ())
    if alias is None or ctx.errors:
        raise ExplainError(f'"{text}" is not a device, user, group, tag, host or address')
    if alias.kind == "wildcard":
        raise ExplainError('"*" is every device: name one device, user, group, tag or host')
    r = index.resolve(alias)
    found = _node_endpoints(index, sorted(r.nodes))
    outside = [t for t in r.extra if t not in {e.address for e in found}]
    for t in outside:
        if dst:
            # Traffic to an address behind a subnet router goes to that router.
            try:
                routers = sorted(index.covering(span(t)))
            except ValueError:
                continue
            found += [Endpoint(t, i, t) for i in routers]
        else:
            found.append(Endpoint(t, None, t))
    if not found:
        raise ExplainError(f'"{text}" names no device here')
    return found


# -- traffic -------------------------------------------------------------------------------


PROTO_NAMES = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmpv6"}


def _ports_text(protos: frozenset[int], ranges: list[tuple[int, int]]) -> str:
    ports = ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in sorted(set(ranges)))
    ports = "*" if ports == "0-65535" else ports
    named = [PROTO_NAMES.get(p, f"proto {p}") for p in sorted(protos - PORTLESS)]
    parts = [f"{'/'.join(named)} {ports}"] if named else []
    parts += [PROTO_NAMES[p] for p in sorted(protos & PORTLESS)]
    return "; ".join(parts)


def explain_traffic(
    policy: Policy,
    topology: Topology,
    src: str,
    dst: str,
    port: int | None,
    proto: int = 6,
    now: datetime | None = None,
) -> Answer:
    """Per (source, destination) pair: allowed on `port`/`proto` (or, without a port, on any
    port), and the rules that allow it with the ports each gives. With `now`, access expired
    by then is left out; rules keep their document index (and so their file:line)."""
    index = build_index(policy, topology, now)
    sources = resolve_endpoints(src, policy, index, topology)
    dests = [
        d for d in resolve_endpoints(dst, policy, index, topology, dst=True) if d.node is not None
    ]
    if not dests:
        raise ExplainError(f'"{dst}" names no device traffic could be delivered to')
    rules = resolve_rules(policy, index, now)
    pairs = []
    for s in sources:
        for d in dests:
            assert d.node is not None
            if s.node == d.node:
                continue
            hits = []
            for pr in rules:
                if port is not None:
                    if any(allows(r, s.address, d.node, d.address, port, proto) for r in pr.rules):
                        hits.append(
                            RuleHit(pr.path, _ports_text(frozenset({proto}), [(port, port)]))
                        )
                    continue
                given = _given(pr.rules, s.address, d.node, d.address)
                if given:
                    hits.append(RuleHit(pr.path, given))
            pairs.append(PairAnswer(s, d, bool(hits), tuple(hits)))
    return Answer(tuple(pairs))


def _given(rules: Sequence[Rule], src_ip: str, node: int, dst_ip: str) -> str:
    """The ports the rules give `src_ip` towards `dst_ip` on `node`, as text ("" for none)."""
    parts = []
    for r in rules:
        if node not in r.dst_nodes or not any(covers(t, src_ip) for t in r.src_ips):
            continue
        ranges = [(p.first, p.last) for t, ps in r.entries(node) if covers(t, dst_ip) for p in ps]
        if ranges:
            parts.append(_ports_text(protos_of(r), ranges))
    return "; ".join(dict.fromkeys(parts))


# -- SSH -------------------------------------------------------------------------------------


def _logins(users: dict[str, str]) -> str:
    out = []
    for login, local in users.items():
        if login == "*":
            out.append("any non-root user" if local == "=" else f"any user as {local}")
        elif local:
            out.append(login if local in (login, "=") else f"{login} as {local}")
    return ", ".join(out) or "nobody"


def _owner(entry: Mapping[str, Any], per_rule: Mapping[int, SshIndex], node: int) -> int | None:
    for k, sidx in per_rule.items():
        if entry in sidx.policy(node)["rules"]:
            return k
    return None


def _deciding(
    whole: SshIndex, per_rule: Mapping[int, SshIndex], node: int, src_ips: set[str], login: str
) -> list[RuleHit]:
    """The rule whose entry decides `login`: the first entry of the node's SSH policy (in
    the compiler's order, which is Tailscale's) that maps it."""
    for entry in whole.policy(node)["rules"]:
        verdict = _ssh_verdict([entry], src_ips, login)
        if verdict is not None:
            k = _owner(entry, per_rule, node)
            return [RuleHit(("ssh", k) if k is not None else ("ssh", "?"), f"{verdict} as {login}")]
    return []


def _letting_in(per_rule: Mapping[int, SshIndex], node: int, src_ips: set[str]) -> list[RuleHit]:
    """Every rule that lets the sources in, with the logins it maps."""
    hits = []
    for k, sidx in per_rule.items():
        for e in sidx.policy(node)["rules"]:
            if any(p.get("nodeIP") in src_ips or p.get("any") for p in e["principals"]):
                action = "check" if "holdAndDelegate" in e["action"] else "accept"
                hits.append(RuleHit(("ssh", k), f"{action}: {_logins(e['sshUsers'])}"))
                break
    return hits


def explain_ssh(
    policy: Policy,
    topology: Topology,
    src: str,
    dst: str,
    login: str | None,
    now: datetime | None = None,
) -> Answer:
    """Per pair: whether `src` may ssh to `dst` (as `login`, or as anyone), by which rules.

    With a login the first entry of the node's SSH policy that maps it decides, as on the
    device; without one, every rule that lets the source in is listed with its logins.
    With `now`, access expired by then is left out; rules keep their document index.
    """
    index = build_index(policy, topology, now)
    sources = resolve_endpoints(src, policy, index, topology)
    dests = [d for d in resolve_endpoints(dst, policy, index, topology) if d.node is not None]
    per_rule = ssh_rule_policies(policy, index, now)
    whole = SshIndex(in_force(policy, now) if now is not None else policy, index)
    pairs = []
    for s in sources:
        src_ips = set(index.ips[s.node]) if s.node is not None else {s.address}
        for d in dests:
            assert d.node is not None
            if s.node == d.node:
                continue
            if login is not None:
                hits = _deciding(whole, per_rule, d.node, src_ips, login)
            else:
                hits = _letting_in(per_rule, d.node, src_ips)
            pairs.append(PairAnswer(s, d, bool(hits), tuple(hits)))
    return Answer(tuple(pairs))
