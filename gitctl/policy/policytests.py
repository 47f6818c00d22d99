"""The policy's own assertions: ``tests`` (packets) and ``sshTests`` (logins).

Tailscale refuses a policy whose tests fail with "test(s) failed"; each
failure here is a sentence naming the source, destination and expectation.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from .addrs import INTERNET_RANGES, span
from .aliases import Index
from .errors import PolicyError
from .expiry import policy_at
from .model import Alias, Policy, PolicyTest, PortRange, SshTest
from .parse import PROTOCOLS, Ctx, parse_alias, parse_prefix
from .posture import Value, meets
from .routes import route_table
from .ssh import SshIndex
from .topology import Topology

TCP = 6
DEFAULT_PROTOS = (6, 17, 1, 58)  # what a rule without "proto" allows
FAILED = "test(s) failed"


class _Unresolvable(Exception):
    pass


def _index(policy: Policy, topology: Topology) -> Index:
    index = Index(policy, topology)
    index.set_routes(list(route_table(policy, topology.nodes, topology.users).enabled))
    return index


def _alias(text: str, policy: Policy) -> Alias:
    errors: list[Any] = []
    ctx = Ctx(
        {"groups": policy.groups, "hosts": policy.hosts, "tagOwners": policy.tag_owners}, errors
    )
    alias = parse_alias(text, ctx, ())
    if alias is None or not text:
        raise _Unresolvable(f'unknown name "{text}"')
    return alias


def _src_ips(index: Index, policy: Policy, text: str) -> list[str]:
    """Addresses a test source stands for: a user's, tag's or group's nodes, or an IP."""
    alias = _alias(text, policy)
    if alias.kind in ("wildcard", "autogroup"):
        raise _Unresolvable(f'"{text}" cannot be a test source')
    r = index.resolve(alias)
    ips = index.node_texts(sorted(r.nodes)) + [t for t in r.extra if "/" not in t and "-" not in t]
    if not ips:
        raise _Unresolvable(f'"{text}" has no addresses')
    return ips


def _dst_ips(index: Index, policy: Policy, text: str) -> list[str]:
    """A test destination must name single addresses (a node, host or IP)."""
    alias = _alias(text, policy)
    if alias.kind in ("wildcard", "autogroup"):
        raise _Unresolvable(f'"{text}" cannot be a test destination')
    r = index.resolve(alias)
    if any("/" in t or "-" in t for t in r.extra):
        raise _Unresolvable(f'"{text}" is a network, not an address')
    ips = index.node_texts(sorted(r.nodes)) + list(r.extra)
    if not ips:
        raise _Unresolvable(f'"{text}" has no addresses')
    return ips


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) <= 65535:
        raise _Unresolvable(f'"{text}" is not a single port')
    return int(text)


def _proto(text: str) -> int:
    if not text:
        return TCP
    if text.isdigit():
        return int(text)
    if text.lower() in PROTOCOLS:
        return PROTOCOLS[text.lower()]
    raise _Unresolvable(f'unknown protocol "{text}"')


def _inside(ip: str, texts: Iterable[str]) -> bool:
    s = span(ip)
    return any(t == "*" or span(t).contains(s) for t in texts)


class _PacketOracle:
    """Whether the policy lets ``src`` reach ``dst:port`` over ``proto``."""

    def __init__(self, policy: Policy, index: Index) -> None:
        self.index = index
        self.postures = policy.postures
        default = policy.default_src_posture
        # (source texts, [(destination texts, ports)], protocols, postures)
        self.rules: list[
            tuple[
                list[str],
                list[tuple[list[str], tuple[PortRange, ...]]],
                tuple[int, ...],
                tuple[str, ...],
            ]
        ] = []
        for acl in policy.acls:
            posture = acl.src_posture or default
            self._add(acl.src, [(d.alias, d.ports) for d in acl.dst], acl.protos, posture)
        for g in policy.grants:
            for cap in g.ip:
                self._add(
                    g.src, [(d, cap.ports) for d in g.dst], cap.protos, g.src_posture or default
                )
        if policy.default_allow:
            self._add(
                (Alias("wildcard", "*"),),
                [(Alias("wildcard", "*"), (PortRange(0, 65535),))],
                (),
                default,
            )

    def _texts(self, alias: Alias) -> list[str]:
        if alias.kind == "wildcard":
            return ["*"]
        if alias == Alias("autogroup", "autogroup:internet"):
            return list(INTERNET_RANGES)
        r = self.index.resolve(alias)
        return [*self.index.node_texts(sorted(r.nodes)), *r.extra]

    def _add(
        self,
        src: Iterable[Alias],
        dsts: list[tuple[Alias, tuple[PortRange, ...]]],
        protos: tuple[int, ...],
        posture: tuple[str, ...],
    ) -> None:
        src_texts = [t for a in src for t in self._texts(a)]
        dst_texts = [
            (self._texts(a), ports)
            for a, ports in dsts
            if a != Alias("autogroup", "autogroup:self")
        ]
        self.rules.append((src_texts, dst_texts, protos or DEFAULT_PROTOS, posture))
        if any(a == Alias("autogroup", "autogroup:self") for a, _ in dsts):
            for nodes in self.index.by_email.values():
                own = self.index.node_texts(sorted(nodes))
                srcs = [t for t in own if _inside(t, src_texts)]
                ports = [p for a, p in dsts if a == Alias("autogroup", "autogroup:self")]
                self.rules.append(
                    (srcs, [(own, p) for p in ports], protos or DEFAULT_PROTOS, posture)
                )

    def facts(self, src: str, given: Mapping[str, Value] | None) -> Mapping[str, Value]:
        """The source's posture: the test's srcPostureAttrs, else its node's own."""
        if given is not None:
            return given
        node = self.index.by_ip.get(src)
        return self.index.facts(node) if node is not None else {}

    def allows(self, src: str, dst: str, port: int, proto: int, facts: Mapping[str, Value]) -> bool:
        for src_texts, dsts, protos, posture in self.rules:
            if proto not in protos or not _inside(src, src_texts):
                continue
            if posture and not meets(self.postures, posture, facts):
                continue
            for texts, ports in dsts:
                if _inside(dst, texts) and any(p.first <= port <= p.last for p in ports):
                    return True
        return False


def _packet_test(oracle: _PacketOracle, index: Index, policy: Policy, t: PolicyTest) -> list[str]:
    if not t.accept and not t.deny:
        raise _Unresolvable("a test needs accept or deny")
    srcs = _src_ips(index, policy, t.src)
    proto = _proto(t.proto)
    failures = []
    for expect, targets in (("accept", t.accept), ("deny", t.deny)):
        for target in targets:
            name, _, port_text = target.rpartition(":")
            port = _port(port_text)
            for dst in _dst_ips(index, policy, name):
                allowed = [
                    oracle.allows(s, dst, port, proto, oracle.facts(s, t.src_posture_attrs))
                    for s in srcs
                ]
                if expect == "accept" and not all(allowed):
                    failures.append(f"{t.src} -> {target}: expected accept, got deny")
                    break
                if expect == "deny" and any(allowed):
                    failures.append(f"{t.src} -> {target}: expected deny, got accept")
                    break
    return failures


def _ssh_verdict(rules: list[dict[str, Any]], srcs: set[str], user: str) -> str | None:
    """The first SSH rule for ``srcs`` that maps ``user``: "accept", "check" or None."""
    for rule in rules:
        if not any(p.get("nodeIP") in srcs or p.get("any") for p in rule["principals"]):
            continue
        users = rule["sshUsers"]
        mapped = users.get(user)
        if mapped is None and user != "root" and users.get("*") == "=":
            mapped = user
        if mapped:
            return "check" if "holdAndDelegate" in rule["action"] else "accept"
    return None


def _ssh_test(index: Index, policy: Policy, policies: SshIndex, t: SshTest) -> list[str]:
    if not (t.accept or t.check or t.deny):
        raise _Unresolvable("an SSH test needs accept, check or deny")
    srcs = set(_src_ips(index, policy, t.src))
    failures = []
    for dst in t.dst:
        if parse_prefix(dst) is not None and ":" in dst:
            # Tailscale resolves SSH test hosts by IPv4 only.
            raise _Unresolvable(f'"{dst}" is not an SSH test destination')
        nodes = {index.by_ip[ip] for ip in _dst_ips(index, policy, dst) if ip in index.by_ip}
        for node in sorted(nodes):
            rules = list(policies.policy(node)["rules"])
            for expect, users in (("accept", t.accept), ("check", t.check), ("deny", t.deny)):
                for user in users:
                    if not user:
                        raise _Unresolvable("empty login user")
                    got = _ssh_verdict(rules, srcs, user)
                    if (got or "deny") != expect:
                        failures.append(
                            f"ssh {t.src} -> {user}@{dst}: expected {expect}, got {got or 'deny'}"
                        )
    return failures


def check_policy_tests(policy: Policy, topology: Topology, *, now: datetime | None = None) -> None:
    """Raise Tailscale's "test(s) failed" when any assertion fails at ``now``."""
    failures = run_policy_tests(policy, topology, now=now)
    if failures:
        raise PolicyError(f"{FAILED}: " + "; ".join(failures))


def run_policy_tests(
    policy: Policy, topology: Topology, *, now: datetime | None = None
) -> list[str]:
    """Failing ``tests``/``sshTests`` assertions as sentences (empty: all pass).

    The tests see the policy in force at ``now``: access that has expired by
    then is gone. A policy with expiry times needs ``now`` (PolicyError without).
    """
    if not policy.tests and not policy.ssh_tests:
        return []
    policy = policy_at(policy, now)
    index = _index(policy, topology)
    failures: list[str] = []
    oracle = _PacketOracle(policy, index)
    for t in policy.tests:
        try:
            failures.extend(_packet_test(oracle, index, policy, t))
        except _Unresolvable as e:
            failures.append(f"test from {t.src!r}: {e}")
    if policy.ssh_tests:
        policies = SshIndex(policy, index)
        for st in policy.ssh_tests:
            try:
                failures.extend(_ssh_test(index, policy, policies, st))
            except _Unresolvable as e:
                failures.append(f"ssh test from {st.src!r}: {e}")
    return failures
