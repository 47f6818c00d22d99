"""Time-limited access: ``expires`` on ACL entries, grants, SSH rules and group members.

An entry with ``"expires": "<RFC 3339 time with a zone>"`` is in force before
that instant and left out of every compile at or after it. The compiler takes
``now`` from its caller (the CLI reads the clock at its edge; the server
passes its own); :func:`next_expiry` tells a server when to compile again.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from .errors import Path, PolicyError
from .model import Alias, MemberExpiry, Policy
from .times import parse_rfc3339

if TYPE_CHECKING:
    from .parse import Ctx

__all__ = [
    "Expiring",
    "expiring",
    "expiring_within",
    "group_member",
    "in_force",
    "next_expiry",
    "parse_expires",
    "policy_at",
]

ExpiringKind = Literal["acl", "grant", "ssh", "group member"]


@dataclass(frozen=True, slots=True)
class Expiring:
    """One time-limited entry. ``who`` names whose access ends (an entry's
    sources, or the member); ``what`` says what they lose; ``path`` locates
    the ``expires`` value in the policy document."""

    kind: ExpiringKind
    path: Path
    expires: datetime
    who: tuple[str, ...]
    what: str


def parse_expires(entry: Mapping[str, Any], path: Path, ctx: Ctx) -> datetime | None:
    """The entry's ``expires`` time, or None; records an error when it is not a time."""
    value = entry.get("expires")
    if value is None:
        return None
    try:
        return parse_rfc3339(value)
    except ValueError as exc:
        ctx.fail(f"expires: {exc}", (*path, "expires"))
        return None


_MEMBER_KEYS = frozenset({"user", "expires"})


def group_member(value: Any, path: Path, ctx: Ctx) -> tuple[str | None, datetime | None]:
    """A group member: a string as in Tailscale's syntax, or ``{"user", "expires"}``."""
    if isinstance(value, str):
        return value, None
    user = value.get("user") if isinstance(value, Mapping) else None
    if not isinstance(user, str) or not set(value) <= _MEMBER_KEYS:
        ctx.fail(
            'a group member is a string or {"user": "alice@example.com", "expires": "<time>"}',
            path,
        )
        return None, None
    return user, parse_expires(value, path, ctx)


def _names(aliases: tuple[Alias, ...]) -> tuple[str, ...]:
    return tuple(a.value for a in aliases)


def _member_expiries(policy: Policy) -> dict[tuple[str, Alias], MemberExpiry]:
    """Per (group, member) the record that ends the membership: the latest one."""
    out: dict[tuple[str, Alias], MemberExpiry] = {}
    for m in policy.member_expiry:
        key = (m.group, m.member)
        if key not in out or m.expires > out[key].expires:
            out[key] = m
    return out


def expiring(policy: Policy) -> Iterator[Expiring]:
    """Every time-limited entry of ``policy``, in document order."""
    for i, acl in enumerate(policy.acls):
        if acl.expires is not None:
            dst = ", ".join(d.alias.value for d in acl.dst)
            yield Expiring("acl", ("acls", i, "expires"), acl.expires, _names(acl.src), dst)
    for i, grant in enumerate(policy.grants):
        if grant.expires is not None:
            dst = ", ".join(_names(grant.dst))
            yield Expiring("grant", ("grants", i, "expires"), grant.expires, _names(grant.src), dst)
    for i, rule in enumerate(policy.ssh):
        if rule.expires is not None:
            dst = ", ".join(_names(rule.dst))
            yield Expiring("ssh", ("ssh", i, "expires"), rule.expires, _names(rule.src), dst)
    for (group, member), m in _member_expiries(policy).items():
        yield Expiring("group member", m.path, m.expires, (member.value,), group)


def next_expiry(policy: Policy, now: datetime) -> datetime | None:
    """The earliest ``expires`` after ``now``: when the compiled result next changes."""
    return min((e.expires for e in expiring(policy) if e.expires > now), default=None)


def expiring_within(policy: Policy, now: datetime, window: timedelta) -> tuple[Expiring, ...]:
    """Entries still in force at ``now`` that expire within ``window``, soonest first."""
    ends = now + window
    soon = (e for e in expiring(policy) if now < e.expires <= ends)
    return tuple(sorted(soon, key=lambda e: e.expires))


def _live(expires: datetime | None, now: datetime) -> bool:
    return expires is None or expires > now


def in_force(policy: Policy, now: datetime) -> Policy:
    """``policy`` without the entries expired at ``now`` (the same object when none is)."""
    gone = {k for k, m in _member_expiries(policy).items() if not _live(m.expires, now)}
    acls = tuple(a for a in policy.acls if _live(a.expires, now))
    grants = tuple(g for g in policy.grants if _live(g.expires, now))
    ssh = tuple(r for r in policy.ssh if _live(r.expires, now))
    if not gone and (len(acls), len(grants), len(ssh)) == (
        len(policy.acls),
        len(policy.grants),
        len(policy.ssh),
    ):
        return policy
    groups = {
        name: tuple(a for a in members if (name, a) not in gone)
        for name, members in policy.groups.items()
    }
    return replace(
        policy,
        acls=acls,
        grants=grants,
        ssh=ssh,
        groups=groups,
        member_expiry=tuple(m for m in policy.member_expiry if (m.group, m.member) not in gone),
    )


def policy_at(policy: Policy, now: datetime | None) -> Policy:
    """The policy in force at ``now``. Without ``now`` a policy that has
    time-limited entries is refused (fail closed), naming the first one."""
    if now is not None:
        return in_force(policy, now)
    first = next(expiring(policy), None)
    if first is not None:
        raise PolicyError(
            "expires: deciding which access is still in force needs the current time, "
            "and none was given (time-limited access is refused rather than guessed)",
            first.path,
        )
    return policy
