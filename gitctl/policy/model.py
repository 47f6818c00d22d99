"""The validated policy: frozen values built by :mod:`parse`, read by the compiler."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from .posture import Condition, Value

AliasKind = Literal["wildcard", "user", "group", "tag", "host", "prefix", "autogroup", "ipset"]


@dataclass(frozen=True, slots=True)
class Alias:
    """One src/dst name. ``value`` is the text after the kind prefix for
    groups/tags/autogroups (kept whole, e.g. ``"tag:web"``), the email (or
    ``*@domain``) for users, the host name, the normalised prefix text, or the
    ipset's name (``"ipset:office"``)."""

    kind: AliasKind
    value: str


WILDCARD = Alias("wildcard", "*")


@dataclass(frozen=True, slots=True)
class PortRange:
    first: int
    last: int


ALL_PORTS = PortRange(0, 65535)


@dataclass(frozen=True, slots=True)
class Dest:
    alias: Alias
    ports: tuple[PortRange, ...]


@dataclass(frozen=True, slots=True)
class AclRule:
    src: tuple[Alias, ...]
    dst: tuple[Dest, ...]
    protos: tuple[int, ...]  # empty = Tailscale's default (TCP, UDP, ICMP)
    src_posture: tuple[str, ...] = ()  # empty = the policy's defaultSrcPosture
    expires: datetime | None = None  # left out of a compile at or after this time


@dataclass(frozen=True, slots=True)
class IpCap:
    """One entry of a grant's ``ip`` list: protocols and ports."""

    protos: tuple[int, ...]
    ports: tuple[PortRange, ...]


@dataclass(frozen=True, slots=True)
class Grant:
    src: tuple[Alias, ...]
    dst: tuple[Alias, ...]
    ip: tuple[IpCap, ...]
    app: Mapping[str, tuple[Any, ...]]
    via: tuple[Alias, ...]
    src_posture: tuple[str, ...] = ()  # empty = the policy's defaultSrcPosture
    expires: datetime | None = None


@dataclass(frozen=True, slots=True)
class SshRule:
    action: Literal["accept", "check"]
    src: tuple[Alias, ...]
    dst: tuple[Alias, ...]
    users: tuple[str, ...]
    check_period: float | None  # seconds; None = default
    accept_env: tuple[str, ...]
    expires: datetime | None = None


@dataclass(frozen=True, slots=True)
class NodeAttr:
    target: tuple[Alias, ...]
    attrs: tuple[str, ...]
    ip_pool: tuple[str, ...]
    app: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)  # capability -> values


@dataclass(frozen=True, slots=True)
class AutoApprovers:
    routes: tuple[tuple[str, tuple[Alias, ...]], ...] = ()
    exit_node: tuple[Alias, ...] = ()


@dataclass(frozen=True, slots=True)
class PolicyTest:
    src: str
    proto: str
    accept: tuple[str, ...]
    deny: tuple[str, ...]
    # The source device's posture attributes for this test; None = the
    # source node's own (a hypothetical device has none).
    src_posture_attrs: Mapping[str, Value] | None = None


@dataclass(frozen=True, slots=True)
class SshTest:
    src: str
    dst: tuple[str, ...]
    accept: tuple[str, ...]
    check: tuple[str, ...]
    deny: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class MemberExpiry:
    """A group member written as ``{"user": ..., "expires": ...}``: it leaves
    ``group`` at ``expires``. ``path`` locates the time in the document."""

    group: str
    member: Alias
    expires: datetime
    path: tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class Policy:
    groups: Mapping[str, tuple[Alias, ...]] = field(default_factory=dict)
    hosts: Mapping[str, str] = field(default_factory=dict)
    tag_owners: Mapping[str, tuple[Alias, ...]] = field(default_factory=dict)
    acls: tuple[AclRule, ...] = ()
    grants: tuple[Grant, ...] = ()
    ssh: tuple[SshRule, ...] = ()
    node_attrs: tuple[NodeAttr, ...] = ()
    auto_approvers: AutoApprovers = AutoApprovers()
    tests: tuple[PolicyTest, ...] = ()
    ssh_tests: tuple[SshTest, ...] = ()
    randomize_client_port: bool = False
    disable_ipv4: bool = False
    postures: Mapping[str, tuple[Condition, ...]] = field(default_factory=dict)
    default_src_posture: tuple[str, ...] = ()
    # ipset name -> its addresses as collapsed prefixes
    ipsets: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # user email (lowercase) -> role, from the snapshot's users (see roles.py);
    # None when the policy was parsed on its own: the topology's roles count.
    roles: Mapping[str, str] | None = None
    # A policy with neither ``acls`` nor ``grants`` allows everything.
    default_allow: bool = False
    # Group members that expire; a member also listed without a time never does.
    member_expiry: tuple[MemberExpiry, ...] = ()
