"""The policy's rules one at a time, resolved by the compiler, for review tools.

The compiler resolves all `acls` and `grants` together and merges what they give each node.
`gitctl lint` and `gitctl explain` need to say *which* rule does something, so each rule is
resolved here on its own, by the compiler's own `RuleBuilder` over the compiler's `Index`:
its sources as node sets and address texts, its destinations as, per node, the address
texts and ports that node's packet filter receives. Nothing here matches rules by itself:
`allows` reads the compiler's output the way a client's packet filter does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from gitctl.diagnostics import JsonPath
from gitctl.policy import Policy, Topology
from gitctl.policy.addrs import span
from gitctl.policy.aliases import Index
from gitctl.policy.expiry import in_force
from gitctl.policy.filter import Rule
from gitctl.policy.routes import route_table
from gitctl.policy.rulebuilder import RuleBuilder
from gitctl.policy.ssh import SshIndex

__all__ = [
    "DEFAULT_PROTOS",
    "PORTLESS",
    "PolicyRule",
    "allows",
    "build_index",
    "covers",
    "protos_of",
    "resolve_rules",
    "ssh_rule_policies",
]

DEFAULT_PROTOS = frozenset({6, 17, 1, 58})  # a rule without "proto": TCP, UDP, ICMP, ICMPv6
PORTLESS = frozenset({1, 58})  # ICMP has no ports: a filter entry allows it whole


@dataclass(frozen=True, slots=True)
class PolicyRule:
    """One `acls` or `grants` entry and the packet-filter rules it becomes."""

    path: JsonPath  # ("acls", 3) or ("grants", 0)
    rules: tuple[Rule, ...]  # traffic rules only: app capabilities and via-only rules aside

    @property
    def matches_nothing(self) -> bool:
        """No node receives it: its sources or its destinations name no device."""
        return not self.rules


def build_index(policy: Policy, topology: Topology, now: datetime | None = None) -> Index:
    """The compiler's name index over `topology`, with its routes in effect; with `now`,
    group members whose membership has expired by then are left out."""
    if now is not None:
        policy = in_force(policy, now)
    index = Index(policy, topology)
    index.set_routes(list(route_table(policy, topology.nodes, topology.users).enabled))
    return index


def _live(expires: datetime | None, now: datetime | None) -> bool:
    return now is None or expires is None or expires > now


def _traffic(rules: Iterable[Rule]) -> tuple[Rule, ...]:
    return tuple(r for r in rules if r.caps is None and not r.hidden)


def resolve_rules(policy: Policy, index: Index, now: datetime | None = None) -> list[PolicyRule]:
    """Every `acls` and `grants` entry, in policy order, resolved on its own. With `now`,
    entries expired by then are left out; the others keep their document index."""
    out = []
    for i, acl in enumerate(policy.acls):
        if not _live(acl.expires, now):
            continue
        builder = RuleBuilder(index)
        builder.add_acl(acl.src, ((d.alias, d.ports) for d in acl.dst), acl.protos)
        out.append(PolicyRule(("acls", i), _traffic(builder.rules)))
    for i, grant in enumerate(policy.grants):
        if not _live(grant.expires, now):
            continue
        builder = RuleBuilder(index)
        builder.add_grant(grant)
        out.append(PolicyRule(("grants", i), _traffic(builder.rules)))
    return out


def covers(text: str, addr_or_range: str) -> bool:
    """Whether a filter text (`*`, an IP, a prefix or a range) covers an address or range."""
    if text == "*":
        return True
    try:
        return span(text).contains(span(addr_or_range))
    except ValueError:
        return False


def protos_of(rule: Rule) -> frozenset[int]:
    return frozenset(rule.protos) if rule.protos else DEFAULT_PROTOS


def allows(rule: Rule, src_ip: str, dst: int, dst_ip: str, port: int, proto: int) -> bool:
    """Whether `rule`, as node `dst` receives it, lets `src_ip` reach `dst_ip:port`."""
    if proto not in protos_of(rule) or dst not in rule.dst_nodes:
        return False
    if not any(covers(t, src_ip) for t in rule.src_ips):
        return False
    for text, ports in rule.entries(dst):
        if covers(text, dst_ip) and (
            proto in PORTLESS or any(p.first <= port <= p.last for p in ports)
        ):
            return True
    return False


def ssh_rule_policies(
    policy: Policy, index: Index, now: datetime | None = None
) -> dict[int, SshIndex]:
    """Per `ssh` entry in force at `now` (all without it), by its document index, the
    compiler's SSH index of a policy holding only that entry."""
    return {
        k: SshIndex(dataclasses.replace(policy, ssh=(r,)), index)
        for k, r in enumerate(policy.ssh)
        if _live(r.expires, now)
    }
