"""Device posture: ``postures``, ``srcPosture`` and ``defaultSrcPosture``.

A posture is a list of conditions on a device's attributes (``node:os ==
'linux'``); a rule with postures admits a source device only when it meets
at least one of them, and drops it from that rule otherwise. Only the
``node:`` attributes a self-hosted server learns from the client's Hostinfo
can be evaluated; attributes fed by Tailscale's API or its third-party
integrations are refused when the policy is validated, never ignored.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from .topology import TopologyNode

Value = str | bool | float
Kind = Literal["string", "version", "bool"]

# The attributes Tailscale documents in the node namespace, and their types.
NODE_ATTRIBUTES: Mapping[str, Kind] = {
    "node:os": "string",
    "node:osVersion": "version",
    "node:tsVersion": "version",
    "node:tsReleaseTrack": "string",
    "node:tsAutoUpdate": "bool",
    "node:tsStateEncrypted": "bool",
}

# Namespaces whose values come from Tailscale's API or its posture integrations.
_FOREIGN = {
    "custom": "set through Tailscale's API",
    "ip": "derived by Tailscale from the client's public address",
}

OPERATORS = ("==", "!=", "<", "<=", ">", ">=", "IN", "NOT IN", "IS SET", "NOT SET")
_ORDERED = ("<", "<=", ">", ">=")

_CONDITION = re.compile(
    r"^\s*(?P<attr>[A-Za-z][\w-]*:[\w.-]+)\s+"
    r"(?P<op>==|!=|<=|>=|<|>|NOT\s+IN\b|IN\b|IS\s+SET\b|NOT\s+SET\b)\s*"
    r"(?P<value>.*?)\s*$"
)
_STRING = re.compile(r"""^(?:'([^']*)'|"([^"]*)")$""")
_NUMBER = re.compile(r"^-?\d+(?:\.\d+)?$")


class PostureSyntaxError(ValueError):
    """A condition Tailscale would not accept; the message is for people."""


@dataclass(frozen=True, slots=True)
class Condition:
    attr: str
    op: str
    values: tuple[Value, ...] = ()

    def holds(self, facts: Mapping[str, Value]) -> bool:
        """Whether a device with ``facts`` meets this condition. An attribute the
        device does not have fails every operator but ``NOT SET``."""
        have = facts.get(self.attr)
        if self.op == "IS SET":
            return have is not None
        if self.op == "NOT SET":
            return have is None
        if have is None:
            return False
        if self.op in ("==", "IN"):
            return any(_equal(have, v) for v in self.values)
        if self.op in ("!=", "NOT IN"):
            return not any(_equal(have, v) for v in self.values)
        order = _compare(have, self.values[0])
        return {"<": order < 0, "<=": order <= 0, ">": order > 0, ">=": order >= 0}[self.op]


def _equal(have: Value, want: Value) -> bool:
    return type(have) is type(want) and have == want


def _compare(have: Value, want: Value) -> int:
    if isinstance(have, str) and isinstance(want, str):
        return compare_versions(have, want)
    a, b = float(have), float(want)
    return (a > b) - (a < b)


_VERSION_PART = re.compile(r"\d+|[A-Za-z]+")


def compare_versions(a: str, b: str) -> int:
    """-1, 0 or 1, comparing numeric fields as numbers and others as text, the
    way Tailscale's ``cmpver`` does ("1.40" < "1.40.1" < "1.100")."""
    pa, pb = _VERSION_PART.findall(a), _VERSION_PART.findall(b)
    for x, y in zip(pa, pb, strict=False):
        if x == y:
            continue
        if x.isdigit() and y.isdigit():
            return -1 if int(x) < int(y) else 1
        if x.isdigit() != y.isdigit():
            return 1 if x.isdigit() else -1  # a number outranks a pre-release word
        return -1 if x < y else 1
    return (len(pa) > len(pb)) - (len(pa) < len(pb))


def _value(text: str) -> Value:
    m = _STRING.match(text)
    if m:
        return m.group(1) if m.group(1) is not None else m.group(2)
    if text in ("true", "false"):
        return text == "true"
    if _NUMBER.match(text):
        return float(text)
    raise PostureSyntaxError(f"invalid value {text}: quote strings, e.g. 'linux'")


def _list(text: str) -> tuple[Value, ...]:
    if not (text.startswith("[") and text.endswith("]")):
        raise PostureSyntaxError(f"IN needs a list such as ['macos', 'linux'], got {text}")
    inner = text[1:-1].strip()
    if not inner:
        raise PostureSyntaxError("IN needs at least one value")
    return tuple(_value(part.strip()) for part in inner.split(","))


def check_attribute(attr: str) -> Kind:
    """The attribute's type; PostureSyntaxError when it cannot be evaluated here."""
    kind = NODE_ATTRIBUTES.get(attr)
    if kind is not None:
        return kind
    namespace = attr.split(":", 1)[0]
    if namespace == "node":
        known = ", ".join(NODE_ATTRIBUTES)
        raise PostureSyntaxError(f'unknown posture attribute "{attr}" (known: {known})')
    why = _FOREIGN.get(namespace, "supplied by a third-party device posture integration")
    raise PostureSyntaxError(
        f'posture attribute "{attr}" is {why}; a self-hosted server cannot know it, '
        f"so a rule depending on it is refused rather than ignored"
    )


def parse_condition(text: str) -> Condition:
    m = _CONDITION.match(text)
    if m is None:
        raise PostureSyntaxError(
            f'invalid posture condition "{text}": expected "<attribute> <operator> <value>"'
            f" with one of {', '.join(OPERATORS)}"
        )
    attr, op, rest = m.group("attr"), " ".join(m.group("op").split()), m.group("value")
    kind = check_attribute(attr)
    if op in ("IS SET", "NOT SET"):
        if rest:
            raise PostureSyntaxError(f'"{op}" takes no value: "{text}"')
        return Condition(attr, op)
    values = _list(rest) if op in ("IN", "NOT IN") else (_value(rest),)
    if op in _ORDERED and kind != "version":
        raise PostureSyntaxError(
            f'operator "{op}" only compares versions (node:osVersion, node:tsVersion): "{text}"'
        )
    for v in values:
        if (kind == "bool") != isinstance(v, bool):
            want = "true or false" if kind == "bool" else "a quoted string"
            raise PostureSyntaxError(f'{attr} takes {want}: "{text}"')
    return Condition(attr, op, values)


def release_track(version: str) -> str | None:
    """Tailscale's stable releases have an even minor version (1.86), unstable odd."""
    parts = version.split(".")
    if len(parts) < 2 or not parts[1].isdigit():
        return None
    return "stable" if int(parts[1]) % 2 == 0 else "unstable"


def node_facts(node: TopologyNode) -> dict[str, Value]:
    """A node's posture attributes; what it did not report is absent."""
    facts: dict[str, Value] = {}
    if node.os:
        facts["node:os"] = node.os.lower()
    if node.os_version:
        facts["node:osVersion"] = node.os_version
    if node.ts_version:
        short = node.ts_version.split("-", 1)[0]  # "1.96.4-t0123abc-g..." -> "1.96.4"
        facts["node:tsVersion"] = short
        track = release_track(short)
        if track is not None:
            facts["node:tsReleaseTrack"] = track
    if node.auto_update is not None:
        facts["node:tsAutoUpdate"] = node.auto_update
    if node.state_encrypted is not None:
        facts["node:tsStateEncrypted"] = node.state_encrypted
    return facts


def meets(
    postures: Mapping[str, tuple[Condition, ...]],
    names: tuple[str, ...],
    facts: Mapping[str, Value],
) -> bool:
    """Whether a device meets any of the named postures (all of one's conditions)."""
    return any(all(c.holds(facts) for c in postures[n]) for n in names)
