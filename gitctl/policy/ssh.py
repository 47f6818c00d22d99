"""The ``ssh`` section to a tailcfg SSHPolicy per destination node."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .aliases import Index
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
# Where the client asks the control server to hold and re-check a session.
CHECK_URL = ("https://unused/machine/ssh/action/$SRC_NODE_ID/to/$DST_NODE_ID"
             "?local_user=$LOCAL_USER")


@dataclass(frozen=True, slots=True)
class SshResult:
    policies: tuple[Mapping[str, Any], ...]
    # per node: bitmask of extra peers it must see because of SSH access
    visible: tuple[int, ...]


def tailnet_domain(index: Index) -> str | None:
    """The tailnet's own domain: the owner's (first user's) email domain."""
    if not index.users:
        return None
    owner = min(index.users, key=lambda u: u.id)
    return owner.email.rpartition("@")[2]


def _domain_error(domain: str, prefix: str = "") -> PolicyError:
    return PolicyError(f"{prefix}{domain} is not associated with this Tailnet and cannot be "
                       "used in user:*@<domain> expressions")


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
    return [u.removeprefix("localpart:*@").lower() for u in users
            if u.startswith("localpart:*@") and len(u) > len("localpart:*@")]


class _SshCompiler:
    def __init__(self, policy: Policy, index: Index) -> None:
        self.policy = policy
        self.index = index
        self.rules: list[list[dict[str, Any]]] = [[] for _ in index.nodes]
        self.visible = [0] * len(index.nodes)

    def _principals(self, nodes: list[int]) -> list[dict[str, str]]:
        return [{"nodeIP": ip} for i in nodes for ip in self.index.ips[i]]

    def _emit(self, dst: int, rule: SshRule, srcs: list[int], seen: set[tuple[int, str]]
              ) -> None:
        if not srcs:
            return
        index = self.index
        base: dict[str, Any] = {
            "principals": self._principals(srcs),
            "sshUsers": _users_map(rule.users),
            "action": _action(rule),
        }
        if rule.accept_env:
            base["acceptEnv"] = list(rule.accept_env)
        for s in srcs:
            self.visible[dst] |= 1 << s
            self.visible[s] |= 1 << dst
        domains = _localpart_domains(rule.users)
        if not domains:
            self.rules[dst].append(base)
            return
        # localpart: each user may log in as the local part of their email, so
        # the rule splits per source user, and each source learns its own part.
        by_user: dict[str, list[int]] = {}
        for i in srcs:
            by_user.setdefault(index.email[i] or f"#{i}", []).append(i)
        for email, nodes in by_user.items():
            part = [{**base, "principals": self._principals(nodes)}]
            local, _, domain = email.partition("@")
            if domain.lower() in domains:
                part.append({**base, "principals": self._principals(nodes),
                             "sshUsers": {local: local}})
            for receiver in (dst, *nodes):
                if (receiver, email) not in seen:
                    seen.add((receiver, email))
                    self.rules[receiver].extend(part)

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
        return out

    def add(self, rule: SshRule) -> None:
        index = self.index
        src_nodes = self._sources(rule.src)
        dsts = index.resolve_many(d for d in rule.dst if d != SELF).members
        seen: set[tuple[int, str]] = set()
        for d in sorted(dsts):
            self._emit(d, rule, src_nodes, seen)
        if SELF in rule.dst:
            for d in sorted(index.members):
                email = index.email[d]
                own = [i for i in src_nodes if index.email[i] == email]
                self._emit(d, rule, own, seen)


def ssh_policies(policy: Policy, index: Index) -> SshResult:
    compiler = _SshCompiler(policy, index)
    for rule in policy.ssh:
        compiler.add(rule)
    # check rules come first so a matching check is never skipped by an accept.
    ordered = [sorted(rules, key=lambda r: "holdAndDelegate" not in r["action"])
               for rules in compiler.rules]
    return SshResult(
        policies=tuple({"rules": rules} for rules in ordered),
        visible=tuple(compiler.visible),
    )
