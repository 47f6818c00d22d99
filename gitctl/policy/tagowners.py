"""Who may apply a tag: ``tagOwners`` as Tailscale reads them
(https://tailscale.com/kb/1068/tags).

A tag's owners are users, groups, role autogroups and other tags; an empty
owner list means the tailnet's admins. A user whose role is owner, admin or
network-admin may apply every declared tag. A node logging in with a tagged
pre-auth key acts as those tags: it may apply them, and any tag one of them owns.
"""

from __future__ import annotations

from collections.abc import Iterable

from .model import Alias, Policy
from .roles import DEFAULT_ROLE, holds

__all__ = ["TAG_ADMIN_ROLES", "tag_refusal"]

# Roles that may apply any tag the policy declares.
TAG_ADMIN_ROLES = ("owner", "admin", "network-admin")


def _role(policy: Policy, email: str) -> str:
    return (policy.roles or {}).get(email.lower(), DEFAULT_ROLE)


def _names(policy: Policy, alias: Alias, email: str | None, tags: frozenset[str]) -> bool:
    """Whether one owner entry names the requester (its user's email, or its key's tags)."""
    kind, value = alias.kind, alias.value
    if kind == "tag":
        return value in tags
    if email is None:
        return False
    if kind == "user":
        if value.startswith("*@"):
            return email.lower().endswith(value[1:].lower())
        return email.lower() == value.lower()
    if kind == "group":
        return any(_names(policy, m, email, tags) for m in policy.groups.get(value, ()))
    if kind == "autogroup":
        wanted = value.removeprefix("autogroup:")
        return wanted == "member" or holds(_role(policy, email), wanted)
    return False


def tag_refusal(
    policy: Policy, wanted: Iterable[str], *, email: str | None, key_tags: Iterable[str] = ()
) -> str | None:
    """Why a node may not carry the tags ``wanted``, or None when it may.

    ``email`` is the login of the node's user (None for a tagged key),
    ``key_tags`` the tags of the pre-auth key it logs in with."""
    tags = frozenset(key_tags)
    for tag in wanted:
        owners = policy.tag_owners.get(tag)
        if owners is None:
            return f"requested tag {tag!r} is not declared in the policy's tagOwners"
        if tag in tags:
            continue
        admin = email is not None and any(holds(_role(policy, email), r) for r in TAG_ADMIN_ROLES)
        if admin or any(_names(policy, owner, email, tags) for owner in owners):
            continue
        who = email or ("the pre-auth key's tags " + ", ".join(sorted(tags)))
        return f"requested tag {tag!r} is not owned by {who} (see the policy's tagOwners)"
    return None
