"""`gitctl lint`'s checks: what a policy says that is probably not what its authors mean.

Each finding is a `Diagnostic` at the file, line and column of the value it is about, whose
message starts with its rule id (`unused-group: …`). The checks read the parsed policy and
the compiler's own resolution of each rule (`gitctl.rules`), never the rule text:

| id | finding |
|---|---|
| unused-group, unused-tag, unused-host, unused-ipset | defined, never named elsewhere |
| shadowed-rule | allows nothing that another rule does not already allow, on these devices |
| no-match-rule, no-match-test | names no device of the inventory (only with one) |
| wildcard-src, wildcard-dst | `*` as a source or destination |
| autogroup-self | a cost note: one compiled rule per user |
| ssh-root | an SSH rule that allows logging in as root |
| ignore-without-reason | a `gitctl:ignore` comment that gives no reason |
| expires-soon | access that expires within `--expiring-within` (only with it) |

Rules and tests are judged as in force at `now` (access expired by then is gone).

A finding is silenced by a comment on the line before it, or before the rule it is in:
`// gitctl:ignore shadowed-rule -- kept while the db move is under way` (`#` in YAML). The
reason after `--` is required.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from gitctl.diagnostics import Diagnostic, JsonPath
from gitctl.policy import Policy, Topology, expiring_within, run_policy_tests
from gitctl.policy.aliases import Index
from gitctl.policy.filter import DstPart, Rule
from gitctl.policy.model import ALL_PORTS
from gitctl.policy.rulebuilder import SELF
from gitctl.rules import PORTLESS, PolicyRule, build_index, covers, protos_of, resolve_rules
from gitctl.snapshot import Snapshot

__all__ = ["RULE_IDS", "Finding", "lint", "lint_findings", "silence"]

RULE_IDS = (
    "unused-group",
    "unused-tag",
    "unused-host",
    "unused-ipset",
    "shadowed-rule",
    "no-match-rule",
    "no-match-test",
    "wildcard-src",
    "wildcard-dst",
    "autogroup-self",
    "ssh-root",
    "ignore-without-reason",
    "expires-soon",
)

# Maps whose keys define names, by the prefix their names carry (hosts carry none).
_DEFINITIONS = {"groups": "group", "tagOwners": "tag", "hosts": "host", "ipsets": "ipset"}
_NOT_REFERENCES = {"hosts", "ipsets", "postures"}  # their values are addresses or conditions


@dataclass(frozen=True, slots=True)
class Finding:
    rule_id: str
    path: JsonPath  # inside the merged policy
    message: str
    key: bool = False  # placed at the key naming `path` rather than at its value
    anchor: JsonPath | None = None  # the rule the finding is in (a silence may sit before it)


# -- unused names --------------------------------------------------------------------------


def _strings(value: Any, top: bool = True) -> Iterator[str]:
    """Every string of the policy that may name something: values, and keys of maps such as
    autoApprovers.routes, but not the names that the definition maps define."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v, False)
    elif isinstance(value, Mapping):
        for k, v in value.items():
            if top and k in _NOT_REFERENCES:
                continue
            if top and k in _DEFINITIONS:
                if k == "groups" or k == "tagOwners":
                    # A group owning a tag is a use of the group; a tag owning a tag is not
                    # a use in a rule, test or autoApprover.
                    owners = [s for vs in v.values() if isinstance(vs, list) for s in vs]
                    yield from (s for s in owners if isinstance(s, str) and s.startswith("group:"))
                continue
            if not top:
                yield str(k)
            yield from _strings(v, False)


def _unused(doc: Mapping[str, Any]) -> Iterator[Finding]:
    named: set[str] = set()
    for s in _strings(doc):
        named.add(s)
        named.add(s.rsplit(":", 1)[0])  # "tag:db:5432", "db:22"
    for section, kind in _DEFINITIONS.items():
        defined = doc.get(section)
        if not isinstance(defined, Mapping):
            continue
        for name in defined:
            if name not in named:
                what = {"group": "group", "tag": "tag", "host": "host", "ipset": "ipset"}[kind]
                yield Finding(
                    f"unused-{kind}",
                    (section, name),
                    f"{what} {name} is never used in a rule, test or auto-approver",
                    key=True,
                )


# -- rules that add nothing ------------------------------------------------------------------


class _Sources:
    """A rule's source texts as a set of single addresses and a few ranges, so that
    containment of another rule's sources is a set lookup per address."""

    def __init__(self, texts: Sequence[str]) -> None:
        self.single = {t for t in texts if "/" not in t and "-" not in t and t != "*"}
        self.ranges = [t for t in texts if t not in self.single]

    def covers(self, texts: Sequence[str]) -> bool:
        return all(t in self.single or any(covers(r, t) for r in self.ranges) for t in texts)


def _part_nodes(pa: DstPart, pb: DstPart) -> AbstractSet[int]:
    """The nodes of `pb` on which `pa`'s addresses include everything `pb` gives them."""
    if pa.addrs is None and pa.text == "*":
        return pa.nodes
    if pb.addrs is not None:
        if pa.addrs is not None:
            return pa.nodes  # both: each node's own addresses
        own = pb.addrs
        return {n for n in pa.nodes & pb.nodes if all(covers(pa.text, ip) for ip in own[n])}
    if pa.addrs is None and covers(pa.text, pb.text):
        return pa.nodes
    return frozenset()


def _rule_covers(b: Rule, a_rules: Sequence[Rule], sources: Mapping[int, _Sources]) -> bool:
    """Whether one of `a_rules` (one policy rule's filter rules) allows everything `b` does."""
    protos = protos_of(b)
    portless = protos <= PORTLESS
    for a in a_rules:
        if not protos <= protos_of(a) or not sources[id(a)].covers(b.src_ips):
            continue
        covered = True
        for pb in b.parts:
            for p in (ALL_PORTS,) if portless else pb.ports:
                reach: set[int] = set()
                for pa in a.parts:
                    if portless or any(q.first <= p.first and p.last <= q.last for q in pa.ports):
                        reach |= _part_nodes(pa, pb)
                if not pb.nodes <= reach:
                    covered = False
                    break
            if not covered:
                break
        if covered:
            return True
    return False


@dataclass(frozen=True, slots=True)
class _Reach:
    rule: PolicyRule
    srcs: frozenset[int]
    dsts: frozenset[int]


def _reach(rule: PolicyRule) -> _Reach:
    srcs: set[int] = set()
    dsts: set[int] = set()
    for r in rule.rules:
        srcs |= r.src_members
        dsts |= r.dst_nodes
    return _Reach(rule, frozenset(srcs), frozenset(dsts))


def _covered(b: _Reach, a: _Reach, sources: Mapping[int, _Sources]) -> bool:
    if not (b.dsts <= a.dsts and b.srcs <= a.srcs):
        return False
    return all(_rule_covers(r, a.rule.rules, sources) for r in b.rule.rules)


def _shadowed(rules: Sequence[PolicyRule], where: Mapping[JsonPath, str]) -> Iterator[Finding]:
    reach = [_reach(r) for r in rules]
    sources = {id(r): _Sources(r.src_ips) for pr in rules for r in pr.rules}
    for j, b in enumerate(reach):
        if b.rule.matches_nothing:
            continue
        for i, a in enumerate(reach):
            if i == j or a.rule.matches_nothing or not _covered(b, a, sources):
                continue
            if i > j and _covered(a, b, sources):
                continue  # two equal rules: the later one is reported
            other = _name(a.rule.path)
            yield Finding(
                "shadowed-rule",
                b.rule.path,
                f"allows nothing that {other} ({where.get(a.rule.path, '?')}) does not already "
                "allow on these devices",
            )
            break


def _name(path: JsonPath) -> str:
    return f"{path[0]}[{path[1]}]"


# -- rules and tests that name no device ---------------------------------------------------------


def _no_match(policy: Policy, rules: Sequence[PolicyRule], index: Index) -> Iterator[Finding]:
    for r in rules:
        if r.matches_nothing:
            yield Finding(
                "no-match-rule", r.path, "reaches no device of the inventory: it does nothing"
            )
    for i, ssh in enumerate(policy.ssh):
        srcs = index.resolve_many(ssh.src).members
        dsts = index.resolve_many(d for d in ssh.dst if d != SELF).members
        if SELF in ssh.dst:
            dsts |= srcs & index.members
        if not srcs or not dsts:
            yield Finding("no-match-rule", ("ssh", i), "names no device of the inventory")


def _no_match_tests(policy: Policy, topology: Topology, now: datetime | None) -> Iterator[Finding]:
    cases: list[tuple[JsonPath, Policy]] = [
        (("tests", i), dataclasses.replace(policy, tests=(t,), ssh_tests=()))
        for i, t in enumerate(policy.tests)
    ]
    cases += [
        (("sshTests", i), dataclasses.replace(policy, tests=(), ssh_tests=(t,)))
        for i, t in enumerate(policy.ssh_tests)
    ]
    for path, one in cases:
        missing = [m for m in run_policy_tests(one, topology, now=now) if "has no addresses" in m]
        if missing:
            yield Finding("no-match-test", path, f"{missing[0]} in the inventory")


# -- risky or costly forms -------------------------------------------------------------------


def _entries(doc: Mapping[str, Any], section: str) -> Iterator[tuple[int, Mapping[str, Any]]]:
    items = doc.get(section)
    if isinstance(items, list):
        for i, item in enumerate(items):
            if isinstance(item, Mapping):
                yield i, item


def _forms(doc: Mapping[str, Any]) -> Iterator[Finding]:
    for section in ("acls", "grants", "ssh"):
        for i, rule in _entries(doc, section):
            anchor = (section, i)
            for field in ("src", "dst"):
                for j, text in enumerate(rule.get(field) or ()):
                    if not isinstance(text, str):
                        continue
                    path = (section, i, field, j)
                    if text == "*" or (field == "dst" and text.startswith("*:")):
                        yield Finding(
                            f"wildcard-{field}",
                            path,
                            f"* as a {'source' if field == 'src' else 'destination'} means "
                            "every device and every subnet route",
                            anchor=anchor,
                        )
                    if field == "dst" and text.split(":")[:2] == ["autogroup", "self"]:
                        yield Finding(
                            "autogroup-self",
                            path,
                            "autogroup:self compiles to one rule per user (cost grows with users)",
                            anchor=anchor,
                        )
            if section == "ssh":
                for j, user in enumerate(rule.get("users") or ()):
                    if user == "root":
                        yield Finding(
                            "ssh-root",
                            (section, i, "users", j),
                            "allows logging in as root",
                            anchor=anchor,
                        )


def _expiring(policy: Policy, now: datetime, window: timedelta) -> Iterator[Finding]:
    for e in expiring_within(policy, now, window):
        when = e.expires.isoformat().replace("+00:00", "Z")
        if e.kind == "group member":
            text = f"{e.who[0]} leaves {e.what} at {when}"
        else:
            text = f"{e.kind} access of {', '.join(e.who)} to {e.what} ends at {when}"
        yield Finding("expires-soon", e.path, text, anchor=e.path[:2])


# -- putting it together ---------------------------------------------------------------------


def lint_findings(
    snapshot: Snapshot,
    topology: Topology,
    *,
    inventory: bool = False,
    now: datetime | None = None,
    window: timedelta | None = None,
) -> list[Finding]:
    """Every finding, unsilenced, in rule-id then policy order, as in force at `now`
    (a policy with `expires` needs it); `window` also reports what ends within it."""
    policy: Policy = snapshot.policy
    doc = snapshot.policy_doc
    findings = list(_unused(doc)) + list(_forms(doc))
    index = build_index(policy, topology, now)
    rules = resolve_rules(policy, index, now)
    where = {r.path: _where(snapshot, r.path) for r in rules}
    findings += _shadowed(rules, where)
    if inventory:
        findings += _no_match(policy, rules, index)
        findings += _no_match_tests(policy, topology, now)
    if window is not None and now is not None:
        findings += _expiring(policy, now, window)
    return findings


def _where(snapshot: Snapshot, path: JsonPath) -> str:
    d = snapshot.policy_diagnostic(path, "")
    return f"{d.file}:{d.line}"


_IGNORE = re.compile(r"(?://|#)\s*gitctl:ignore\b(?P<ids>[^\n]*?)(?:\s--(?P<reason>[^\n]*))?$")


@dataclass(frozen=True, slots=True)
class _Silence:
    ids: frozenset[str]
    reason: str
    col: int


def _silences(texts: Mapping[str, str]) -> dict[tuple[str, int], _Silence]:
    out = {}
    for file, text in texts.items():
        for n, line in enumerate(text.splitlines(), start=1):
            m = _IGNORE.search(line)
            if m is not None:
                ids = frozenset(re.split(r"[\s,]+", m["ids"].strip())) - {""}
                out[(file, n)] = _Silence(ids, (m["reason"] or "").strip(), m.start() + 1)
    return out


def silence(
    findings: Sequence[Finding], snapshot: Snapshot, texts: Mapping[str, str]
) -> list[Diagnostic]:
    """The findings as diagnostics, less those a `gitctl:ignore` comment silences, plus a
    finding for each such comment that gives no reason."""
    silences = _silences(texts)
    out = []
    for f in findings:
        d = snapshot.policy_diagnostic(f.path, f"{f.rule_id}: {f.message}")
        if f.key and snapshot.provenance is not None:
            d = snapshot.provenance.diagnostic(
                ("policy", *f.path), d.message, key=True, fallback_file=snapshot.root
            )
        lines = [(d.file, d.line - 1)]
        if f.anchor is not None:
            a = snapshot.policy_diagnostic(f.anchor, "")
            lines.append((a.file, a.line - 1))
        found = [silences[k] for k in lines if k in silences]
        if any(f.rule_id in s.ids and s.reason for s in found):
            continue
        out.append(d)
    for (file, line), s in sorted(silences.items()):
        if not s.reason:
            out.append(
                Diagnostic(
                    file,
                    line,
                    s.col,
                    "ignore-without-reason: say why after `--`, e.g. "
                    "`gitctl:ignore shadowed-rule -- kept until the migration ends`",
                )
            )
        elif unknown := sorted(s.ids - set(RULE_IDS)):
            out.append(Diagnostic(file, line, s.col, f"unknown lint rule {', '.join(unknown)}"))
    return sorted(out, key=lambda d: (d.file, d.line, d.col, d.message))


def lint(
    snapshot: Snapshot,
    texts: Mapping[str, str],
    topology: Topology,
    *,
    inventory: bool = False,
    now: datetime | None = None,
    window: timedelta | None = None,
) -> list[Diagnostic]:
    found = lint_findings(snapshot, topology, inventory=inventory, now=now, window=window)
    return silence(found, snapshot, texts)
