"""What the running tailnet takes from a snapshot (`TailnetSource`), and the
runtime users a login admitted beside git's (`with_runtime_users`)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from gitctl.policy import Policy
from gitctl.snapshot import Snapshot
from gitctl.tailnet import TailnetSettings
from server.store.model import Node
from server.wire import dns_config_json

__all__ = ["TailnetSource", "with_runtime_users"]


@dataclass(frozen=True, slots=True)
class TailnetSource:
    """What the server takes from a snapshot; built once per swap."""

    id: str
    domain: str
    dns_config: Mapping[str, Any]
    users: Mapping[str, tuple[str, str]]  # name -> (email, display name)
    policy: Policy
    # Routes approved in git: by machine key text ("mkey:…") or by tag. autoApprovers
    # are the compiler's: it approves with the users resolved to emails.
    explicit_routes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    settings: TailnetSettings | None = None  # prefixes, key expiry, ephemeral timeout, DERP
    # The snapshot itself, for where each policy value came from (file:line).
    snapshot: Snapshot | None = field(default=None, compare=False, repr=False)
    # Names in `users` that are runtime users (admitted at login, not declared in git;
    # each is its email): `with_runtime_users` adds them.
    runtime_users: frozenset[str] = frozenset()

    @property
    def git_users(self) -> dict[str, tuple[str, str]]:
        return {n: u for n, u in self.users.items() if n not in self.runtime_users}

    def owner(self, node: Node) -> Node:
        """`node` owned by the git user declaring its owner's email, when its owner is a
        runtime user that a commit has since declared (git wins; no duplicate user)."""
        if node.user is None or node.user in self.users or "@" not in node.user:
            return node
        for name, (email, _) in self.users.items():
            if email.lower() == node.user:
                return replace(node, user=name)
        return node

    @classmethod
    def from_snapshot(cls, snap: Snapshot) -> TailnetSource:
        dns = snap.dns
        base = dns.base_domain or ""
        cfg = dns_config_json(
            magic_dns=bool(dns.magic_dns),
            base_domain=base,
            override_local_dns=bool(dns.override_local_dns),
            global_nameservers=tuple(dns.nameservers),
            split={k: tuple(v) for k, v in dict(dns.split).items()},
            search_domains=tuple(dns.search_domains),
            extra_records=tuple((r.name, r.type, r.value) for r in dns.extra_records),
        )
        users = {u.name: (u.email, u.display_name or u.name) for u in snap.users}
        explicit: dict[str, tuple[str, ...]] = {}
        for approval in snap.routes:
            target = approval.machine or approval.tag
            if target:
                explicit[target] = explicit.get(target, ()) + tuple(str(r) for r in approval.routes)
        return cls(
            id=snap.id,
            domain=base,
            dns_config=cfg,
            users=users,
            policy=snap.policy,
            explicit_routes=explicit,
            settings=snap.settings,
            snapshot=snap,
        )


def with_runtime_users(source: TailnetSource, emails: Iterable[str]) -> TailnetSource:
    """`source` serving the runtime users `emails` too, except those git declares."""
    git = source.git_users
    declared = {email.lower() for email, _ in git.values()} | set(git)
    added = {e: (e, e) for e in sorted(emails) if e not in declared}
    if not added and not source.runtime_users:
        return source
    return replace(source, users={**git, **added}, runtime_users=frozenset(added))
