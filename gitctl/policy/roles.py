"""Tailnet roles: who ``autogroup:owner``, ``autogroup:admin`` and the other role
autogroups stand for.

Roles come from ``users.yaml`` (each user's ``role``, default ``member``) and
from nowhere else: :func:`role_table` turns the snapshot's users into the table
the policy carries (:func:`with_roles`), so ``gitctl test``, ``gitctl diff`` and
the server, which all compile the snapshot's policy, resolve them alike. A
policy parsed on its own (a topology file, the conformance corpus) takes the
roles its topology's users declare.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from .model import Policy
from .topology import TopologyUser

# Tailscale's user roles (https://tailscale.com/kb/1138/user-roles).
ROLES = ("owner", "admin", "member", "it-admin", "network-admin", "billing-admin", "auditor")
DEFAULT_ROLE = "member"
# The autogroups that name users by role; autogroup:member is every user, whatever its role.
ROLE_AUTOGROUPS = frozenset(r for r in ROLES if r != "member")


def role_table(users: Iterable[Any]) -> Mapping[str, str]:
    """Lowercased email -> role, for anything with ``email`` and ``role``."""
    return {u.email.lower(): getattr(u, "role", None) or DEFAULT_ROLE for u in users}


def with_roles(policy: Policy, users: Iterable[Any]) -> Policy:
    """``policy`` carrying the roles of ``users`` (a snapshot's ``UserSpec``s)."""
    return dataclasses.replace(policy, roles=role_table(users))


def holds(role: str, wanted: str) -> bool:
    """Whether a user with ``role`` belongs to ``autogroup:<wanted>``: the owner
    is also an admin, as Tailscale's owner holds every admin permission."""
    return role == wanted or (wanted == "admin" and role == "owner")


def role_emails(
    policy: Policy, users: Iterable[TopologyUser], wanted: str
) -> frozenset[str] | None:
    """Lowercased emails of the users in ``autogroup:<wanted>``; None when
    ``wanted`` is not a role autogroup."""
    if wanted not in ROLE_AUTOGROUPS:
        return None
    table = policy.roles if policy.roles is not None else role_table(users)
    return frozenset(e for e, role in table.items() if holds(role, wanted))
