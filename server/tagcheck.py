"""ACL tags on pre-auth keys and nodes, against the policy being served.

A tag is well formed by Tailscale's rule (tailcfg.CheckTag): `tag:`, then a
letter, then letters, digits and dashes. It is declared when the policy's
`tagOwners` names it (a tailnet.d without policy keys declares none). A new
pre-auth key may carry only declared tags; keys and nodes whose
tags a later commit stopped declaring are reported (`undeclared`), since the
policy no longer says who owns them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from gitctl.policy import Policy
from server.store.model import Node, PreAuthKey

__all__ = [
    "Undeclared",
    "check_new_key_tags",
    "declared_tags",
    "key_usable",
    "tag_problem",
    "undeclared",
]

_TAG = re.compile(r"tag:[A-Za-z][A-Za-z0-9-]*")


def tag_problem(tag: str) -> str | None:
    """Why a tag is not well formed, or None if it is."""
    if _TAG.fullmatch(tag):
        return None
    if not tag.startswith("tag:"):
        return "tags start with 'tag:'"
    if tag == "tag:":
        return "the name after 'tag:' is empty"
    if not tag[4].isascii() or not tag[4].isalpha():
        return "the name after 'tag:' starts with a letter"
    return "a tag name has only letters, digits and dashes"


def declared_tags(policy: Policy) -> frozenset[str]:
    """The tags the policy declares in tagOwners. A tailnet.d without policy keys
    (allow-all) declares none: a tag is always something git says exists."""
    return frozenset(policy.tag_owners)


def check_new_key_tags(tags: Iterable[str], policy: Policy) -> None:
    """ValueError naming the first tag a new pre-auth key may not carry."""
    declared = declared_tags(policy)
    for tag in tags:
        problem = tag_problem(tag)
        if problem is not None:
            raise ValueError(f"tag {tag!r} is not a valid tag: {problem}")
        if tag not in declared:
            known = ", ".join(sorted(declared)) or "none"
            raise ValueError(
                f"tag {tag!r} is not declared in the policy's tagOwners (declared tags: {known})"
            )


@dataclass(frozen=True, slots=True)
class Undeclared:
    """A node or a still-usable pre-auth key carrying tags the policy does not declare."""

    kind: Literal["node", "key"]
    id: int
    name: str  # the node's name, or the key's public prefix
    tags: tuple[str, ...]  # only the undeclared ones

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "id": self.id, "name": self.name, "tags": list(self.tags)}

    def describe(self) -> str:
        what = f"node {self.id} {self.name}" if self.kind == "node" else f"pre-auth key {self.name}"
        return f"{what} carries {', '.join(self.tags)}, which the policy's tagOwners do not declare"


def key_usable(key: PreAuthKey, now: datetime) -> bool:
    """Whether the key could still register a node: not revoked, spent or expired."""
    spent = key.revoked or (key.used and not key.reusable)
    return not spent and not (key.expiration is not None and now >= key.expiration)


def undeclared(
    policy: Policy, nodes: Iterable[Node], keys: Iterable[PreAuthKey], now: datetime
) -> list[Undeclared]:
    """Nodes, then pre-auth keys that could still register one, with undeclared tags.

    A revoked, expired or used single-use key is left out: it tags nothing again."""
    declared = declared_tags(policy)

    def outside(tags: Iterable[str]) -> tuple[str, ...]:
        return tuple(t for t in tags if t not in declared)

    found = [Undeclared("node", n.id, n.given_name, outside(n.tags)) for n in nodes]
    for key in keys:
        if key_usable(key, now):
            found.append(Undeclared("key", key.id, key.prefix, outside(key.tags)))
    return [entry for entry in found if entry.tags]
