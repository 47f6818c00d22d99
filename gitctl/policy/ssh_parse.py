"""Validation of the ``ssh`` and ``sshTests`` sections."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .errors import Path
from .expiry import parse_expires
from .model import SshRule, SshTest

if TYPE_CHECKING:
    from .parse import Ctx

_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_go_duration(text: str) -> float:
    """Seconds in a Go ``time.ParseDuration`` string; ValueError with Go's text."""
    sign = 1.0
    rest = text
    if rest[:1] in "+-" and rest:
        sign = -1.0 if rest[0] == "-" else 1.0
        rest = rest[1:]
    if rest == "0":
        return 0.0
    total = 0.0
    pos = 0
    while pos < len(rest):
        m = _DURATION_PART.match(rest, pos)
        if m is None:
            raise ValueError(f'time: invalid duration "{text}"')
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if not rest:
        raise ValueError(f'time: invalid duration "{text}"')
    return sign * total


def format_go_duration(seconds: float) -> str:
    """Go's ``Duration.String`` for whole seconds (enough for error messages)."""
    sign = "-" if seconds < 0 else ""
    s = int(abs(seconds))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    if h:
        return f"{sign}{h}h{m}m{sec}s"
    if m:
        return f"{sign}{m}m{sec}s"
    return f"{sign}{sec}s"


def _list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else []


def parse_ssh_rule(rule: Mapping[str, Any], i: int, ctx: Ctx) -> SshRule | None:
    from .parse import parse_alias

    path: Path = ("ssh", i)
    n_errors = len(ctx.errors)
    action = rule.get("action")
    if isinstance(action, str):
        action = action.strip()
    if not action:
        ctx.fail("action must be specified", (*path, "action"))
    elif action not in ("accept", "check"):
        ctx.fail(f'"{action}" is not a valid action', (*path, "action"))
    users = [u.strip() if isinstance(u, str) else u for u in _list(rule.get("users"))]
    if not users:
        ctx.fail("users must be specified", (*path, "users"))
    for j, u in enumerate(users):
        if not isinstance(u, str) or u in ("", "*"):
            ctx.fail(f'user "{u}" is not valid', (*path, "users", j))
    check_period: float | None = None
    raw_period = rule.get("checkPeriod")
    if isinstance(raw_period, str) and raw_period != "always":
        try:
            check_period = parse_go_duration(raw_period)
        except ValueError as e:
            ctx.fail(str(e), (*path, "checkPeriod"))
        else:
            if check_period <= 0:
                ctx.fail(
                    f"checkPeriod {format_go_duration(check_period)} must be a positive duration",
                    (*path, "checkPeriod"),
                )
    if "srcPosture" in rule:
        # Tailscale's SSH rules have no srcPosture (kb/1193, kb/1288: postures
        # gate acls and grants); refused rather than ignored, never failing open.
        ctx.fail(
            "srcPosture is not supported in ssh rules: put the posture on the acl or "
            "grant that opens port 22, or in defaultSrcPosture",
            (*path, "srcPosture"),
        )
    for key in ("recorder", "enforceRecorder"):
        if rule.get(key):
            ctx.fail(
                f"{key} is not supported: this server does not run SSH session recording",
                (*path, key),
            )
    accept_env = _list(rule.get("acceptEnv"))
    for j, env in enumerate(accept_env):
        if not env:
            ctx.fail("acceptEnv values cannot be empty", (*path, "acceptEnv", j))
    src = []
    for j, text in enumerate(_list(rule.get("src"))):
        alias = parse_alias(text.strip(), ctx, (*path, "src", j))
        if alias is not None:
            src.append(alias)
    dst = []
    for j, text in enumerate(_list(rule.get("dst"))):
        alias = parse_alias(text.strip(), ctx, (*path, "dst", j))
        if alias is None:
            continue
        if alias.kind in ("host", "prefix"):
            ctx.fail(f'invalid dst "{text}"', (*path, "dst", j))
            continue
        dst.append(alias)
    expires = parse_expires(rule, path, ctx)
    if len(ctx.errors) != n_errors:
        return None
    return SshRule(
        action="check" if action == "check" else "accept",
        src=tuple(src),
        dst=tuple(dst),
        users=tuple(users),
        check_period=check_period,
        accept_env=tuple(accept_env),
        expires=expires,
    )


def parse_ssh_test(test: Any, i: int, ctx: Ctx) -> SshTest | None:
    path: Path = ("sshTests", i)
    if not isinstance(test, Mapping):
        ctx.fail("sshTests entries must be objects", path)
        return None
    dst = [d for d in _list(test.get("dst")) if isinstance(d, str)]
    for j, d in enumerate(dst):
        if d.startswith("autogroup:internet") or ("/" in d):
            ctx.fail(f'SSH tests dst contains disallowed element "{d}"', (*path, "dst", j))
            return None
    return SshTest(
        src=src if isinstance(src := test.get("src"), str) else "",
        dst=tuple(dst),
        accept=tuple(_list(test.get("accept"))),
        check=tuple(_list(test.get("check"))),
        deny=tuple(_list(test.get("deny"))),
    )
