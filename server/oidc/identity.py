"""From verified ID token claims to a tailnet user and its policy groups, or a refusal.

Order of checks, each refusal naming its check: an email (``email``), verified unless
the operator allows otherwise (``email_verified``), the allow-lists (``allowed_emails``,
``allowed_domains``, ``allowed_groups``: each one set must admit the identity), then a
user of tailnet.d with that email, or a runtime user when the operator admits unknown
identities (``unknown_user``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .refusal import Refusal
from .settings import OidcSettings

__all__ = ["MAX_GROUPS", "Identity", "admit", "claim_groups"]

MAX_GROUPS = 256  # groups kept from one login; more is a misconfigured claim
MAX_GROUP_NAME = 128


@dataclass(frozen=True, slots=True)
class Identity:
    email: str  # lower case
    user: str  # the tailnet.d user name (or the email, for a runtime user)
    groups: tuple[str, ...]  # policy group names ("group:..."), sorted
    declared: bool  # the user is in tailnet.d; False: admitted as a runtime user
    subject: str  # the provider's "sub"


def claim_groups(claims: Mapping[str, Any], settings: OidcSettings) -> tuple[str, ...]:
    """The policy groups the configured claim names: ``group:<prefix><value>`` each.
    A string claim counts as one group; anything that is not a string is ignored."""
    raw = claims.get(settings.groups_claim)
    values = [raw] if isinstance(raw, str) else raw if isinstance(raw, list) else []
    out = {
        f"group:{settings.groups_prefix}{v}"
        for v in values[:MAX_GROUPS]
        if isinstance(v, str) and v and len(v) <= MAX_GROUP_NAME and not v.isspace()
    }
    return tuple(sorted(out))


def admit(claims: Mapping[str, Any], settings: OidcSettings, users: Mapping[str, str]) -> Identity:
    """``users`` maps each tailnet.d user's email (lower case) to its name.
    Raises Refusal."""
    email = claims.get("email")
    if not isinstance(email, str) or "@" not in email:
        raise Refusal(
            "email",
            "Your identity provider did not send an email address; ask your administrator "
            "to grant the email scope.",
        )
    email = email.strip().lower()
    verified = claims.get("email_verified")
    if not settings.allow_unverified_email and verified is not True:
        raise Refusal(
            "email_verified",
            f"The email address {email} is not verified by your identity provider.",
            email,
        )
    groups = claim_groups(claims, settings)
    domain = email.rpartition("@")[2]
    if settings.allowed_emails and email not in settings.allowed_emails:
        raise Refusal("allowed_emails", f"{email} is not on this tailnet's list of emails.", email)
    if settings.allowed_domains and domain not in settings.allowed_domains:
        raise Refusal(
            "allowed_domains", f"Accounts of {domain} ({email}) may not join this tailnet.", email
        )
    if settings.allowed_groups and not settings.allowed_groups & set(_raw_groups(claims, settings)):
        raise Refusal(
            "allowed_groups",
            f"{email} is in none of the groups allowed to join this tailnet.",
            email,
        )
    name = users.get(email)
    if name is None and not settings.admit_unknown:
        raise Refusal(
            "unknown_user",
            f"{email} is not a user of this tailnet. Ask an administrator to add it to "
            "tailnet.d/users.yaml.",
            email,
        )
    subject = claims.get("sub")
    return Identity(
        email=email,
        user=name if name is not None else email,
        groups=groups,
        declared=name is not None,
        subject=subject if isinstance(subject, str) else "",
    )


def _raw_groups(claims: Mapping[str, Any], settings: OidcSettings) -> tuple[str, ...]:
    prefix = f"group:{settings.groups_prefix}"
    return tuple(g.removeprefix(prefix) for g in claim_groups(claims, settings))
