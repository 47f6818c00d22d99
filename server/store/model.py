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
from typing import Any, Literal

from server.protocol.keys import DiscoPublic, MachinePublic, NodePublic
from server.wire.hostinfo import Hostinfo

__all__ = [
    "AddressExhausted",
    "ApiKey",
    "AuditEntry",
    "ApiScope",
    "AllocationStrategy",
    "Conflict",
    "InvalidName",
    "KeyRejected",
    "OAuthClient",
    "Node",
    "NotFound",
    "OutboxItem",
    "PendingLogin",
    "PreAuthKey",
    "Registration",
    "Rng",
    "RuntimeUser",
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
    hostinfo: Hostinfo  # as last reported (stored as JSON text)
    endpoints: tuple[str, ...]  # "ip:port"
    capver: int
    approved: bool = True  # False: waits for an operator (settings.yaml device_approval)
    # Advertised routes an operator approved at runtime (only counted when settings.yaml
    # allows runtime_route_approval); they stay with the node's record, so with its machine.
    runtime_routes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Registration:
    """A node logging in (a pre-auth key, an interactive or OIDC login, a test
    fixture): what the store writes, whether the machine is new or known.

    A new machine gets a node with every field below. A known one
    (re-registration) keeps its id, addresses, given name, Hostinfo and
    approval, and takes the key, owner, tags, expiry and ephemerality here.
    With `auth_key_id` the store marks that pre-auth key used in the same
    transaction as the node write (and refuses a spent one with KeyRejected).
    """

    machine_key: MachinePublic
    node_key: NodePublic
    hostname: str
    user: str | None  # None for a node owned by its tags
    now: datetime  # when it logged in: the node's creation and last-seen time
    tags: tuple[str, ...] = ()
    auth_key_id: int | None = None
    ephemeral: bool = False
    key_expiry: datetime | None = None  # None = never expires
    hostinfo: Hostinfo | None = None  # a new node's; None = empty
    capver: int = 0
    disco_key: DiscoPublic | None = None
    endpoints: tuple[str, ...] = ()
    approved: bool = True  # a new node's; False: waits for device approval


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
    declared_name: str | None = None  # the key's name in keys.yaml; None: made through the API


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
class OAuthClient:
    """A client of the OAuth client-credentials grant (`/api/v2/oauth/token`):
    its id is the public prefix of its secret; the tokens it is issued are
    short-lived API keys, with the scope its Tailscale scope names allow."""

    id: int
    client_id: str
    scopes: tuple[str, ...]  # Tailscale's scope names, e.g. "devices:core:read"
    description: str
    created: datetime
    last_used: datetime | None


@dataclass(frozen=True, slots=True)
class PendingLogin:
    """A node waiting for its user to finish an interactive (web) login."""

    auth_id: str
    machine_key: MachinePublic
    node_key: NodePublic
    ephemeral: bool
    created: datetime


@dataclass(frozen=True, slots=True)
class RuntimeUser:
    """A person admitted at runtime (an identity-provider login the operator lets in
    without a line in tailnet.d/users.yaml): known by email, which is also its name.
    `last_login` is when that identity last logged in."""

    email: str  # lower case
    created: datetime
    last_login: datetime


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One admin action as it was asked and answered: who (`socket`,
    `apikey:<id>:<prefix>` or `anonymous`), what (the action, its target and
    its parameters without secrets), when, and the result (`ok`, or the
    problem's kind with its HTTP status and detail)."""

    id: int
    at: datetime
    actor: str
    action: str
    target: str | None
    params: dict[str, Any]
    status: int
    result: str
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """A webhook delivery not yet acknowledged: `body` goes to `url`; items of
    one `queue` (a node, or the tailnet) are delivered in `id` order."""

    id: int
    url: str
    queue: str
    body: bytes
    attempts: int = 0


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
