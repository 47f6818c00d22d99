"""What the operator page shows, gathered from the running tailnet as plain
frozen rows: the templates only lay them out.

The access explorer asks `gitctl.explain` (the `gitctl explain` engine) about
the serving snapshot's policy over the live nodes, and places each rule that
allows a pair at the file and line it came from, as `gitctl explain` does.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime

from gitctl.explain import ExplainError, explain_traffic
from gitctl.explain_cmd import parse_destination
from gitctl.policy import Topology, TopologyUser
from gitctl.policy.parse import PROTOCOLS
from gitctl.validate_cmd import UsageError
from server.sources.repo import RepoStatus
from server.store.model import Node
from server.tailnet import NodeRegistry, Tailnet
from server.tailnet.views import advertised_routes, to_topology_node
from server.wire import format_time, stable_user_id

__all__ = [
    "AccessAnswer",
    "AccessRow",
    "CommitFacts",
    "NodeRow",
    "UserRow",
    "access",
    "commit_facts",
    "node_rows",
    "user_rows",
]


def _time(at: datetime | None, never: str = "never") -> str:
    return format_time(at) if at is not None else never


@dataclass(frozen=True, slots=True)
class NodeRow:
    name: str
    owner: str  # the user, or the tags of a tagged node
    online: bool
    addresses: tuple[str, ...]
    advertised: tuple[str, ...]
    approved: tuple[str, ...]
    primary: tuple[str, ...]
    tags: tuple[str, ...]
    last_seen: str
    version: str
    key_expiry: str


def node_rows(tailnet: Tailnet, registry: NodeRegistry) -> list[NodeRow]:
    primaries = tailnet.primaries
    rows = []
    # Owners as served: a runtime user a commit has since declared is the git user.
    for n in sorted(map(tailnet.source.owner, registry.nodes()), key=lambda n: n.given_name):
        advertised = advertised_routes(n)
        primary = tuple(sorted(p for p, node_id in primaries.items() if node_id == n.id))
        view = tailnet.views.get(n.id) if tailnet.serves(n.id) else None
        allowed = set(view.self_allowed_ips) if view is not None else set()
        approved = set(tailnet.enabled_routes(n)) | (set(advertised) & allowed) | set(primary)
        rows.append(
            NodeRow(
                name=n.given_name,
                owner=n.user if n.user is not None and not n.tags else ", ".join(n.tags),
                online=tailnet.is_online(n.id),
                addresses=tuple(str(a) for a in (n.ipv4, n.ipv6) if a is not None),
                advertised=advertised,
                approved=tuple(r for r in advertised if r in approved),
                primary=primary,
                tags=n.tags,
                last_seen=_time(n.last_seen),
                version=n.hostinfo.ipn_version or "unknown",
                key_expiry=_time(n.key_expiry),
            )
        )
    return rows


@dataclass(frozen=True, slots=True)
class UserRow:
    name: str
    email: str
    display_name: str
    nodes: int
    source: str  # git: declared in tailnet.d; runtime: admitted at an OIDC login


def user_rows(tailnet: Tailnet, registry: NodeRegistry) -> list[UserRow]:
    counts: dict[str, int] = {}
    for n in map(tailnet.source.owner, registry.nodes()):
        if n.user is not None and not n.tags:
            counts[n.user] = counts.get(n.user, 0) + 1
    runtime = tailnet.source.runtime_users
    return [
        UserRow(name, email, display, counts.get(name, 0), "runtime" if name in runtime else "git")
        for name, (email, display) in sorted(tailnet.source.users.items())
    ]


@dataclass(frozen=True, slots=True)
class HistoryRow:
    at: str
    revision: str
    outcome: str
    reasons: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class CommitFacts:
    serving: str | None
    serving_since: str
    signer: str | None
    rejected: str | None  # the revision last refused, if any
    rejected_at: str
    errors: tuple[str, ...]  # file:line:col: message
    history: tuple[HistoryRow, ...]


def commit_facts(status: RepoStatus, *, history_limit: int = 50) -> CommitFacts:
    entries = status.journal.entries(limit=history_limit) if status.journal is not None else []
    rejected = status.rejected
    return CommitFacts(
        serving=status.serving,
        serving_since=_time(status.serving_since, "-"),
        signer=status.signer,
        rejected=rejected.revision if rejected is not None else None,
        rejected_at=_time(rejected.at if rejected is not None else None, "-"),
        errors=rejected.errors if rejected is not None else (),
        history=tuple(
            HistoryRow(format_time(e.at), e.revision, e.outcome, e.reasons) for e in entries
        ),
    )


# -- the access explorer ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AccessRow:
    src: str
    dst: str
    allowed: bool
    rule: str  # "acls[2]", "" when denied
    where: str  # "policy.hujson:14", "" when denied
    ports: str


@dataclass(frozen=True, slots=True)
class AccessAnswer:
    question: str
    verdict: str  # allowed, partly allowed, denied
    rows: tuple[AccessRow, ...]


def live_topology(tailnet: Tailnet, nodes: list[Node]) -> Topology:
    """The live nodes as the compiler sees them, named as people name them (their
    DNS label) so that a question and its answer speak of devices by name."""
    served = [n for n in nodes if tailnet.serves(n.id)]
    by_id = {n.id: n.given_name for n in served}
    users = tailnet.source.users
    return Topology(
        users=tuple(
            TopologyUser(id=stable_user_id(name), name=name, email=email)
            for name, (email, _) in users.items()
        ),
        nodes=tuple(
            replace(to_topology_node(n, tailnet.enabled_routes(n)), name=n.given_name)
            for n in served
        ),
        primaries={p: by_id[i] for p, i in tailnet.primaries.items() if i in by_id},
    )


def _who(name: str, address: str) -> str:
    return name if name == address else f"{name} ({address})"


def access(
    tailnet: Tailnet, registry: NodeRegistry, src: str, dst: str, port: str, proto: str
) -> AccessAnswer:
    """May `src` reach `dst` (on `port`, or on which ports), and by which rule in which
    file and line. Raises ValueError with a message for people on a bad question."""
    src, dst, port, proto = src.strip(), dst.strip(), port.strip(), proto.strip() or "tcp"
    if not src or not dst:
        raise ValueError("name a source and a destination")
    try:
        dst, in_dst = parse_destination(dst)
    except UsageError as exc:
        raise ValueError(str(exc)) from None
    if port and (not port.isdigit() or int(port) > 65535):
        raise ValueError(f'"{port}" is not a port (0 to 65535)')
    number = int(port) if port else in_dst
    if proto.lower() not in PROTOCOLS:
        raise ValueError(f'unknown protocol "{proto}"')
    source = tailnet.source
    topology = live_topology(tailnet, registry.nodes())
    try:
        answer = explain_traffic(
            source.policy, topology, src, dst, number, PROTOCOLS[proto.lower()]
        )
    except ExplainError as exc:
        raise ValueError(str(exc)) from None
    snap = source.snapshot
    rows = []
    for pair in answer.pairs:
        s, d = _who(pair.src.name, pair.src.address), _who(pair.dst.name, pair.dst.address)
        if not pair.allowed:
            rows.append(AccessRow(s, d, False, "", "", "no rule allows it"))
        for hit in pair.rules:
            rule = f"{hit.path[0]}[{hit.path[1]}]"
            where = ""
            if snap is not None:
                diag = snap.policy_diagnostic(hit.path, "")
                where = f"{diag.file}:{diag.line}"
            rows.append(AccessRow(s, d, True, rule, where, hit.detail))
    on = f" on {proto.lower()} port {number}" if number is not None else " on any port"
    return AccessAnswer(f"{src} → {dst}{on}", answer.verdict, tuple(rows))


def known_names(tailnet: Tailnet, registry: NodeRegistry) -> list[str]:
    """What the explorer's fields suggest: devices, users, groups and tags."""
    policy = tailnet.source.policy
    names = [n.given_name for n in registry.nodes()]
    names += sorted(tailnet.source.users)
    names += sorted(policy.groups) + sorted(policy.tag_owners)
    return list(dict.fromkeys(names))
