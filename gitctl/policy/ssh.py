"""The ``ssh`` section to a tailcfg SSHPolicy per destination node."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .aliases import Index
from .bitsets import bitset
from .errors import PolicyError
from .model import Alias, Policy, SshRule

SELF = Alias("autogroup", "autogroup:self")
TAGGED = Alias("autogroup", "autogroup:tagged")
NONROOT = "autogroup:nonroot"
ACCEPT_ACTION: Mapping[str, Any] = {
    "accept": True,
    "allowAgentForwarding": True,
    "allowLocalPortForwarding": True,
    "allowRemotePortForwarding": True,
}
# Tailscale's default checkPeriod: a check is remembered for 12 hours.
DEFAULT_CHECK_PERIOD = 12 * 3600.0
# Where the client asks the control server to hold and re-check a session.
CHECK_URL = "https://unused/machine/ssh/action/$SRC_NODE_ID/to/$DST_NODE_ID?local_user=$LOCAL_USER"


def tailnet_domain(index: Index) -> str | None:
    """The tailnet's own domain: the owner's (first user's) email domain."""
    if not index.users:
        return None
    owner = min(index.users, key=lambda u: u.id)
    return owner.email.rpartition("@")[2]


def _domain_error(domain: str, prefix: str = "") -> PolicyError:
    return PolicyError(
        f"{prefix}{domain} is not associated with this Tailnet and cannot be "
        "used in user:*@<domain> expressions"
    )


def check_ssh_domains(policy: Policy, index: Index) -> None:
    """``user:*@domain`` and ``localpart:*@domain`` only work for the tailnet's domain."""
    domain = tailnet_domain(index)
    for i, rule in enumerate(policy.ssh):
        for j, a in enumerate(rule.src):
            if a.kind == "user" and a.value.startswith("*@"):
                d = a.value[2:]
                if d != domain:
                    e = _domain_error(d, "[ssh] ")
                    e.path = ("ssh", i, "src", j)
                    raise e
        for j, u in enumerate(rule.users):
            if u.startswith("localpart:*@"):
                d = u.removeprefix("localpart:*@")
                if d and d != domain:
                    e = _domain_error("PASSKEY" if d.lower() == domain and d != domain else d)
                    e.path = ("ssh", i, "users", j)
                    raise e


def _action(rule: SshRule) -> dict[str, Any]:
    if rule.action == "check":
        return {"holdAndDelegate": CHECK_URL}
    return dict(ACCEPT_ACTION)


def _users_map(users: tuple[str, ...]) -> dict[str, str]:
    """Local users a rule allows; root is always named, denied unless listed."""
    out = {"root": "root" if "root" in users else ""}
    for u in users:
        if u == NONROOT:
            out["*"] = "="
        elif u.startswith("localpart:*@") and len(u) > len("localpart:*@"):
            continue  # expanded per source user
        elif u != "root":
            out[u] = u
    return out


def _localpart_domains(users: tuple[str, ...]) -> list[str]:
    return [
        u.removeprefix("localpart:*@").lower()
        for u in users
        if u.startswith("localpart:*@") and len(u) > len("localpart:*@")
    ]


@dataclass(frozen=True, slots=True)
class _SshRuleIndex:
    """One ``ssh`` rule resolved to node sets, from which any node's share of
    it is derived without visiting the other nodes."""

    rule: SshRule
    srcs: tuple[int, ...]  # one entry per alias naming the node, as principals list them
    src_mask: int
    dsts: frozenset[int]
    dst_mask: int
    first_dst: int  # the destination the rule is delivered to first (-1: none)
    has_self: bool
    domains: tuple[str, ...]  # localpart:*@domain domains (lower case)
    # source key (email, or "#i" for a node without one) -> its sources in order
    by_key: Mapping[str, tuple[int, ...]]
    key_masks: Mapping[str, int]


class SshIndex:
    """Per-node SSH policies, computed on demand.

    The result equals running every rule over every destination in order (as
    Tailscale does): each rule contributes, per destination, one entry for its
    sources and, with ``localpart:``, one pair of entries per source user,
    which that user's own nodes receive too (once per rule).
    """

    def __init__(self, policy: Policy, index: Index) -> None:
        self.index = index
        self._member_masks: dict[str, int] = {}
        for i in index.members if policy.ssh else ():  # read only through rules
            email = index.email[i]
            assert email is not None
            self._member_masks[email] = self._member_masks.get(email, 0) | 1 << i
        self._rules = [self._resolve(rule) for rule in policy.ssh]
        self._principals: dict[tuple[int, str], list[dict[str, str]]] = {}

    def _key(self, i: int) -> str:
        return self.index.email[i] or f"#{i}"

    def _resolve(self, rule: SshRule) -> _SshRuleIndex:
        index = self.index
        n = len(index.nodes)
        srcs = tuple(self._sources(rule.src))
        by_key: dict[str, list[int]] = {}
        key_masks: dict[str, int] = {}
        for i in srcs:
            k = self._key(i)
            by_key.setdefault(k, []).append(i)
            key_masks[k] = key_masks.get(k, 0) | 1 << i
        dsts = index.resolve_many(d for d in rule.dst if d != SELF).members
        return _SshRuleIndex(
            rule=rule,
            srcs=srcs,
            src_mask=bitset(srcs, n),
            dsts=dsts,
            dst_mask=bitset(dsts, n),
            first_dst=min(dsts, default=-1),
            has_self=SELF in rule.dst,
            domains=tuple(_localpart_domains(rule.users)),
            by_key={k: tuple(v) for k, v in by_key.items()},
            key_masks=key_masks,
        )

    def _sources(self, aliases: tuple[Alias, ...]) -> list[int]:
        """Source nodes, one entry per alias that names them, as Tailscale lists
        principals (autogroup:tagged counts once per tag a node carries)."""
        index = self.index
        out: list[int] = []
        for a in aliases:
            if a == TAGGED:
                for tag in sorted(index.by_tag):
                    out.extend(sorted(index.by_tag[tag]))
            else:
                out.extend(sorted(index.resolve(a).members))
        # defaultSrcPosture narrows SSH sources too: a device failing it may
        # not log in even where an acl or grant of its own opens port 22.
        default = index.policy.default_src_posture
        if default:
            ok = index.posture_nodes(default)
            out = [i for i in out if i in ok]
        return out

    def visible(self, node: int) -> int:
        """Peers ``node`` must see because one may log in to the other."""
        mask = 0
        bit = 1 << node
        email = self.index.email[node]
        for r in self._rules:
            if not r.srcs:
                continue
            if node in r.dsts:
                mask |= r.src_mask
            if r.src_mask & bit:
                mask |= r.dst_mask
            if r.has_self and email is not None:
                own = r.key_masks.get(email, 0)
                mask |= own
                if own & bit:
                    mask |= self._member_masks[email]
        return mask

    def check_period(self, src: int, dst: int) -> float | None:
        """The `checkPeriod` (seconds) of the first `check` rule that lets node
        `src` log in to node `dst`: how long the control server may remember
        an approval before it asks again. None when no check rule applies;
        DEFAULT_CHECK_PERIOD when the rule names none."""
        email = self.index.email[src]
        for r in self._rules:
            if r.rule.action != "check" or not r.src_mask >> src & 1:
                continue
            own = r.has_self and email is not None and email == self.index.email[dst]
            if dst in r.dsts or own:
                period = r.rule.check_period
                return DEFAULT_CHECK_PERIOD if period is None else period
        return None

    def co_sources(self, node: int) -> int:
        """Nodes whose SSH policies list ``node`` without seeing it: with
        ``localpart:``, each source receives its user's principals."""
        mask = 0
        key = self._key(node)
        for r in self._rules:
            if r.domains and r.src_mask >> node & 1:
                mask |= r.key_masks[key]
        return mask & ~(1 << node)

    def changed_since(self, previous: SshIndex) -> int:
        """Nodes whose SSH policy or SSH-given peers may differ from
        ``previous``'s, an index of another policy over the same nodes.

        A rule touches its sources, its destinations and, through
        ``autogroup:self`` and ``localpart:``, every node of its source users;
        rules present in both keep their effect as long as they keep their
        order among themselves."""
        old, new = [_rule_key(r) for r in previous._rules], [_rule_key(r) for r in self._rules]
        if old == new:
            return 0
        old_count, new_count = Counter(old), Counter(new)
        gone, added = old_count - new_count, new_count - old_count
        kept_old = [k for k in old if k not in gone]
        kept_new = [k for k in new if k not in added]
        reordered = kept_old != kept_new
        mask = 0
        for index, keys in ((previous, old), (self, new)):
            for r, key in zip(index._rules, keys, strict=True):
                if reordered or key in gone or key in added:
                    mask |= index._reach(r)
        return mask

    def touching(self, node: int) -> int:
        """Nodes whose SSH policy may name ``node`` or depend on its presence:
        those every rule with it as a source or destination reaches (a
        ``localpart:`` rule's sources get their own part only while the rule
        has a destination, and from the first one)."""
        mask = 0
        for r in self._rules:
            if node in r.dsts or r.src_mask >> node & 1:
                mask |= self._reach(r)
        return mask

    def _reach(self, r: _SshRuleIndex) -> int:
        """The nodes a rule can touch: its sources, its destinations and,
        through ``autogroup:self`` and ``localpart:``, every node of its
        source users."""
        mask = r.src_mask | r.dst_mask
        for key in r.key_masks:
            mask |= self._member_masks.get(key, 0)
        return mask

    def policy(self, node: int) -> Mapping[str, Any]:
        entries: list[dict[str, Any]] = []
        for r in self._rules:
            if r.srcs:
                entries.extend(self._entries(r, node))
        # check rules come first so a matching check is never skipped by an accept.
        entries.sort(key=lambda e: "holdAndDelegate" not in e["action"])
        return {"rules": entries}

    def _entries(self, r: _SshRuleIndex, node: int) -> list[dict[str, Any]]:
        email = self.index.email[node]
        own_key = self._key(node)
        as_dst = node in r.dsts
        # With autogroup:self, a user's node receives its own user's sources.
        self_srcs = r.has_self and email is not None and email in r.by_key
        if not r.domains:
            out = [self._base(r, r.srcs, "*")] if as_dst else []
            if self_srcs:
                assert email is not None
                out.append(self._base(r, r.by_key[email], email))
            return out
        # localpart: parts per source user, each delivered once per receiver;
        # a source receives its own user's part from the first destination.
        keys: list[str] = []
        is_src = r.src_mask >> node & 1 == 1
        if as_dst:
            if is_src and r.first_dst < node:
                keys.append(own_key)
            keys.extend(k for k in r.by_key if k not in keys)
        elif is_src and r.dsts:
            keys.append(own_key)
        if self_srcs and own_key not in keys:
            keys.append(own_key)
        out = []
        for k in keys:
            out.extend(self._part(r, k))
        return out

    def _base(self, r: _SshRuleIndex, srcs: tuple[int, ...], key: str) -> dict[str, Any]:
        rule = r.rule
        base: dict[str, Any] = {
            "principals": self._principal_list(r, srcs, key),
            "sshUsers": _users_map(rule.users),
            "action": _action(rule),
        }
        if rule.accept_env:
            base["acceptEnv"] = list(rule.accept_env)
        return base

    def _principal_list(
        self, r: _SshRuleIndex, srcs: tuple[int, ...], key: str
    ) -> list[dict[str, str]]:
        cache_key = (id(r), key)
        out = self._principals.get(cache_key)
        if out is None:
            out = self._principals[cache_key] = [
                {"nodeIP": ip} for i in srcs for ip in self.index.ips[i]
            ]
        return out

    def _part(self, r: _SshRuleIndex, key: str) -> list[dict[str, Any]]:
        base = self._base(r, r.by_key[key], key)
        part = [base]
        local, _, domain = key.partition("@")
        if domain.lower() in r.domains:
            part.append({**base, "sshUsers": {local: local}})
        return part


def _rule_key(r: _SshRuleIndex) -> tuple[Any, ...]:
    return (r.rule, r.srcs, r.dsts, r.has_self, r.domains)
