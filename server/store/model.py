"""Domain records and errors of the runtime state store.

These are what the rest of the server sees: plain frozen values, never rows or
cursors, so a PostgreSQL backend later returns exactly the same things.
Users and tags are referenced by name only; who they are and what they may do
comes from git.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from ipaddress import IPv4Address, IPv6Address
from typing import Literal

from server.protocol.keys import DiscoPublic, MachinePublic, NodePublic

__all__ = [
    "AddressExhausted",
    "ApiKey",
    "ApiScope",
    "AllocationStrategy",
    "Conflict",
    "InvalidName",
    "KeyRejected",
    "Node",
    "NotFound",
    "PendingLogin",
    "PreAuthKey",
    "Rng",
    "SchemaError",
    "StoreError",
]

# Randomness is passed in, as keys.py does: a function returning n random bytes
# (os.urandom in production, random.Random(seed).randbytes in tests).
Rng = Callable[[int], bytes]

AllocationStrategy = Literal["sequential", "random"]
ApiScope = Literal["read", "admin"]


@dataclass(frozen=True, slots=True)
class Node:
    id: int  # never reused (AUTOINCREMENT)
    machine_key: MachinePublic
    node_key: NodePublic
    disco_key: DiscoPublic  # zero until the first map request
    ipv4: IPv4Address | None
    ipv6: IPv6Address | None
    hostname: str  # as reported by the client (Hostinfo.Hostname)
    given_name: str  # unique DNS label in the tailnet
    user: str | None  # owner user name; None for a tagged node
    tags: tuple[str, ...]  # "tag:x", from the auth key
    auth_key_id: int | None
    ephemeral: bool
    created: datetime
    last_seen: datetime | None
    key_expiry: datetime | None  # None = never expires
    hostinfo: str  # JSON text as reported, passed through
    endpoints: tuple[str, ...]  # "ip:port"
    capver: int


@dataclass(frozen=True, slots=True)
class PreAuthKey:
    id: int
    prefix: str  # the public, lookup part of the key text
    user: str
    reusable: bool
    ephemeral: bool
    tags: tuple[str, ...]
    created: datetime
    expiration: datetime | None  # None = never expires
    used: bool
    revoked: bool


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A credential for the admin API over HTTP: `admin` may do everything the
    API offers over TCP, `read` only look."""

    id: int
    prefix: str  # the public, lookup part of the key text
    created: datetime
    expiration: datetime | None  # None = never expires
    last_used: datetime | None
    scope: ApiScope = "admin"


@dataclass(frozen=True, slots=True)
class PendingLogin:
    """A node waiting for its user to finish an interactive (web) login."""

    auth_id: str
    machine_key: MachinePublic
    node_key: NodePublic
    ephemeral: bool
    created: datetime


class StoreError(Exception):
    """Root of the store's errors; the message is written for people."""


class NotFound(StoreError):
    pass


class Conflict(StoreError):
    """A uniqueness rule would be broken (machine key, node key, name)."""


class InvalidName(StoreError):
    pass


class AddressExhausted(StoreError):
    pass


class SchemaError(StoreError):
    """The database file cannot be used by this version of tailnetd."""


class KeyRejected(StoreError):
    """A pre-auth or API key cannot be used; `reason` is safe to show to the client."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
