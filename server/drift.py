"""Drift: runtime state that differs from what the served commit declares.

Git is the source of truth; a few things can still change at runtime, through the admin
API, and this module names each one (`tailnetd drift`, `GET /api/v1/drift`):

| kind | what |
|---|---|
| `undeclared-key` | a usable pre-auth key made through the API, not declared in keys.yaml |
| `missing-key` | a key keys.yaml declares that the server does not hold as declared |
| `key-differs` | a declared key whose properties differ from keys.yaml (its secret is unreadable) |
| `node-tags` | a node whose tags were set through the API: not those of the key it joined with |
| `undeclared-tag` | a node or usable key carrying a tag tagOwners does not declare |
| `unknown-user` | a node owned by a user who is not in users.yaml (the server does not serve it) |
| `runtime-user` | a person admitted at an identity-provider login, not in users.yaml (served) |

Route approvals are not listed: no API path approves a route (they change by commit only).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from gitctl.policy import Policy
from gitctl.tailnet import KeySpec
from server.store.model import Node, PreAuthKey
from server.tagcheck import key_usable, undeclared

__all__ = ["Drift", "find_drift"]

Kind = Literal[
    "undeclared-key",
    "missing-key",
    "key-differs",
    "node-tags",
    "undeclared-tag",
    "unknown-user",
    "runtime-routes",
    "runtime-user",
]


@dataclass(frozen=True, slots=True)
class Drift:
    kind: Kind
    subject: str  # "node 3 laptop", "key ci", "pre-auth key abcd1234efgh"
    message: str  # what differs, for people

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "subject": self.subject, "message": self.message}


def _key_drift(
    declared: Sequence[KeySpec], keys: Sequence[PreAuthKey], now: datetime
) -> list[Drift]:
    out = []
    by_name = {k.declared_name: k for k in keys if k.declared_name is not None}
    for spec in declared:
        key = by_name.get(spec.name)
        if key is None:
            out.append(
                Drift("missing-key", f"key {spec.name}", "declared in keys.yaml, not created")
            )
            continue
        want = (spec.user or "", spec.tags, spec.reusable, spec.ephemeral, spec.expires)
        have = (key.user, key.tags, key.reusable, key.ephemeral, key.expiration)
        if want != have:
            message = "differs from keys.yaml: its secret could not be read at the last sync"
            out.append(Drift("key-differs", f"key {spec.name}", message))
    for key in keys:
        if key.declared_name is None and key_usable(key, now):
            owner = f"tags {', '.join(key.tags)}" if key.tags else f"user {key.user}"
            message = f"usable pre-auth key for {owner}, made at runtime, not in keys.yaml"
            out.append(Drift("undeclared-key", f"pre-auth key {key.prefix}", message))
    return out


def _node_drift(
    nodes: Sequence[Node], keys: Mapping[int, PreAuthKey], users: Iterable[str]
) -> list[Drift]:
    known = set(users)
    out = []
    for n in nodes:
        subject = f"node {n.id} {n.given_name}"
        key = keys.get(n.auth_key_id) if n.auth_key_id is not None else None
        if key is not None and n.tags != key.tags:
            joined = ", ".join(key.tags) or "no tags"
            now_tags = ", ".join(n.tags) or "no tags"
            message = f"tags set at runtime: {now_tags} (its key gave {joined})"
            out.append(Drift("node-tags", subject, message))
        elif key is None and n.tags:
            message = f"tags set at runtime: {', '.join(n.tags)} (it joined without a tagged key)"
            out.append(Drift("node-tags", subject, message))
        if n.runtime_routes:
            message = f"routes approved at runtime, not in git: {', '.join(n.runtime_routes)}"
            out.append(Drift("runtime-routes", subject, message))
        if not n.tags and n.user is not None and n.user not in known:
            message = f"owned by {n.user}, who is not in users.yaml (not served)"
            out.append(Drift("unknown-user", subject, message))
    return out


def find_drift(
    *,
    declared_keys: Sequence[KeySpec],
    users: Iterable[str],
    policy: Policy,
    nodes: Sequence[Node],
    keys: Sequence[PreAuthKey],
    now: datetime,
    runtime_users: Iterable[str] = (),
) -> list[Drift]:
    """Every difference between runtime state and the served commit, keys first.
    `runtime_users`: the people admitted at login that `users` also holds."""
    out = _key_drift(declared_keys, keys, now)
    out += [
        Drift(
            "runtime-user",
            f"user {email}",
            "admitted at an identity-provider login, not in users.yaml "
            "(declare it in git, or tailnetd users delete)",
        )
        for email in sorted(runtime_users)
    ]
    out += _node_drift(nodes, {k.id: k for k in keys}, users)
    for entry in undeclared(policy, nodes, keys, now):
        subject = (
            f"node {entry.id} {entry.name}"
            if entry.kind == "node"
            else f"pre-auth key {entry.name}"
        )
        message = f"carries {', '.join(entry.tags)}, not declared in tagOwners"
        out.append(Drift("undeclared-tag", subject, message))
    return out
