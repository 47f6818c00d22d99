"""Which top-level key belongs to which section, and how each section merges across files.

The rule, also stated in the schemas' descriptions: a file named `dns.*` or `settings.*`
holds that section's keys at its top level; in every other file each top-level key names
a section (`users`, `routes`, `keys`, `dns`, `settings`) or is a policy key (`acls`, `groups`, …).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "CONCAT",
    "IGNORED_KEYS",
    "ONCE",
    "MapMerge",
    "Strategy",
    "POLICY_KEYS",
    "SECTION_FILES",
    "SECTION_STRATEGIES",
    "TOP_LEVEL_KEYS",
    "did_you_mean",
    "SECTIONS",
    "section_of",
]

SECTIONS = ("users", "routes", "keys", "dns", "settings", "policy")

# Tailscale's policy-file keys (client/tailscale/acl.go, plus grants/sshTests/ipsets).
POLICY_KEYS = (
    "groups",
    "hosts",
    "tagOwners",
    "acls",
    "grants",
    "ssh",
    "nodeAttrs",
    "autoApprovers",
    "tests",
    "sshTests",
    "ipsets",
    "postures",
    "defaultSrcPosture",
    "randomizeClientPort",
    "derpMap",
    "disableIPv4",
    "oneCGNATRoute",
)

# Files whose top level *is* the section (headscale's `dns:` block pasted as a file).
SECTION_FILES = ("dns", "settings")

# owners.yaml says who owns which fragments (gitctl/tailnet/owners.py); it is no section.
OWNERS_STEM = "owners"

# `$schema` is an editor hint, accepted anywhere at the top level and ignored.
IGNORED_KEYS = ("$schema",)

TOP_LEVEL_KEYS = ("users", "routes", "keys", "dns", "settings", *POLICY_KEYS)


def section_of(key: str) -> str | None:
    """The section a top-level key belongs to, or None when the key is unknown."""
    if key in POLICY_KEYS:
        return "policy"
    if key in ("users", "routes", "keys", "dns", "settings"):
        return key
    return None


def did_you_mean(word: str, choices: tuple[str, ...] | list[str]) -> str:
    """` (did you mean "x"?)` when a choice is close, else ``; case differences count as close."""
    lowered = {c.lower(): c for c in choices}
    if word.lower() in lowered:
        return f' (did you mean "{lowered[word.lower()]}"?)'
    close = difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=0.6)
    return f' (did you mean "{lowered[close[0]]}"?)' if close else ""


ONCE: Literal["once"] = "once"  # may be set in one file only
CONCAT: Literal["concat"] = "concat"  # lists from all files, in file-name order


@dataclass(frozen=True, slots=True)
class MapMerge:
    """A mapping whose keys merge across files; `label` names its entries in messages."""

    children: dict[str, Strategy] = field(default_factory=dict)
    default: Strategy = ONCE
    label: str | None = None

    def child(self, key: str) -> Strategy:
        return self.children.get(key, self.default)


Strategy = MapMerge | Literal["once", "concat"]

_ENTRIES = MapMerge  # readability below: a map of named entries, each defined once

SECTION_STRATEGIES: dict[str, Strategy] = {
    "users": CONCAT,
    "routes": CONCAT,
    "keys": CONCAT,
    "policy": MapMerge(
        {
            "groups": _ENTRIES(label="group"),
            "hosts": _ENTRIES(label="host"),
            "tagOwners": _ENTRIES(label="tag owner of"),
            "ipsets": _ENTRIES(label="ipset"),
            "postures": _ENTRIES(label="posture"),
            "autoApprovers": MapMerge(
                {
                    "routes": _ENTRIES(label="auto-approver of route"),
                    "exitNode": CONCAT,
                }
            ),
            "acls": CONCAT,
            "grants": CONCAT,
            "ssh": CONCAT,
            "nodeAttrs": CONCAT,
            "tests": CONCAT,
            "sshTests": CONCAT,
            "defaultSrcPosture": CONCAT,
        }
    ),
    "dns": MapMerge(
        {
            "nameservers": MapMerge({"split": _ENTRIES(label="split DNS domain")}),
            "search_domains": CONCAT,
            "extra_records": CONCAT,
        }
    ),
    "settings": MapMerge(
        {
            "ip_prefixes": MapMerge(),
            "derp": MapMerge({"regions": _ENTRIES(label="DERP region")}),
        }
    ),
}
