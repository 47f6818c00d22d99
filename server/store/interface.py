"""The store as the server sees it: one small interface, backends behind it.

sqlite and PostgreSQL implement it (`_sqlstore.SqlStore`, one SQL core, with
the packages `sqlite/` and `postgres/` for transactions, locking and applying
migrations). Every method is short and synchronous; the server calls them from
its one asyncio thread.

Registration is one call: `create_node` / `reregister_node` given one frozen
`Registration`. With its `auth_key_id` set, the store checks that pre-auth key
(revoked, expired, single-use already used raise KeyRejected) and marks it used
in the same transaction as the node write, so a failed registration never burns
a key and a single-use key never registers twice. `check_preauth_key`
beforehand gives the key's user and tags.

Conventions: `now` and `rng` are always passed in. Lookups return None when
nothing matches; changes to something that does not exist raise NotFound.
Every change bumps `generation`.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime
from ipaddress import IPv4Network, IPv6Network
from typing import Any, Literal, Protocol

from server.protocol.keys import DiscoPublic, MachinePublic, NodePublic
from server.store.model import (
    AllocationStrategy,
    ApiKey,
    ApiScope,
    AuditEntry,
    Node,
    OAuthClient,
    OutboxItem,
    PendingLogin,
    PreAuthKey,
    Registration,
    Rng,
    RuntimeUser,
)
from server.wire import Hostinfo

__all__ = ["Store"]


class Store(Protocol):
    @property
    def generation(self) -> int:
        """Grows with every change committed through this handle (a cache key).

        Changes made by another process on the same database are not counted.
        """
        ...

    def close(self) -> None: ...

    def set_addressing(
        self,
        ipv4_prefix: IPv4Network | None,
        ipv6_prefix: IPv6Network | None,
        allocation: AllocationStrategy,
    ) -> None:
        """Where new nodes' addresses come from; nodes keep the ones they have."""
        ...

    # Nodes

    def create_node(self, registration: Registration) -> Node:
        """A new machine's node (Conflict if the machine or node key has one)."""
        ...

    def reregister_node(self, node_id: int, registration: Registration) -> Node:
        """A known machine logging in again: same node, new key, owner and expiry."""
        ...

    def get_node(self, node_id: int) -> Node | None: ...
    def node_by_node_key(self, node_key: NodePublic) -> Node | None: ...
    def node_by_machine_key(self, machine_key: MachinePublic) -> Node | None: ...
    def nodes_by_keys(
        self, node_keys: Sequence[NodePublic], machine_key: MachinePublic
    ) -> list[Node]: ...
    def list_nodes(self) -> list[Node]: ...

    def update_node_key(self, node_id: int, node_key: NodePublic, now: datetime) -> Node: ...

    def update_from_map(
        self,
        node_id: int,
        *,
        now: datetime,
        disco_key: DiscoPublic | None = None,
        hostinfo: Hostinfo | None = None,
        hostname: str | None = None,
        endpoints: Sequence[str] | None = None,
        capver: int | None = None,
    ) -> Node: ...

    def touch_last_seen(self, node_id: int, now: datetime) -> None: ...
    def set_key_expiry(self, node_id: int, when: datetime | None) -> Node: ...
    def set_node_approved(self, node_id: int, approved: bool) -> Node: ...
    def set_runtime_routes(self, node_id: int, routes: Sequence[str]) -> Node: ...
    def rename_node(self, node_id: int, new_given_name: str) -> Node: ...

    def set_node_tags(self, node_id: int, tags: Sequence[str]) -> Node:
        """Replace a node's tags. Non-empty tags make it a tagged node: no
        owning user, a key that does not expire (Tailscale's rule)."""
        ...

    def delete_node(self, node_id: int) -> Node: ...
    def delete_ephemeral_inactive(self, before: datetime) -> list[Node]: ...

    # Pre-auth keys

    def create_preauth_key(
        self,
        user: str,
        *,
        reusable: bool,
        ephemeral: bool,
        tags: Sequence[str],
        expiration: datetime | None,
        now: datetime,
        rng: Rng,
    ) -> tuple[str, PreAuthKey]: ...

    def check_preauth_key(self, text: str, now: datetime) -> PreAuthKey: ...
    def use_preauth_key(self, key_id: int) -> PreAuthKey: ...
    def list_preauth_keys(self, user: str | None = None) -> list[PreAuthKey]: ...
    def expire_preauth_key(self, id_or_prefix: int | str, now: datetime) -> PreAuthKey: ...
    def revoke_preauth_key(self, id_or_prefix: int | str) -> PreAuthKey: ...
    def put_declared_key(
        self,
        name: str,
        text: str,
        *,
        user: str,
        reusable: bool,
        ephemeral: bool,
        tags: Sequence[str],
        expiration: datetime | None,
        now: datetime,
    ) -> tuple[PreAuthKey, Literal["created", "rotated", "updated", "unchanged"]]: ...
    def expire_undeclared_keys(self, names: Collection[str], now: datetime) -> list[PreAuthKey]: ...

    # API keys (the admin API over HTTP)

    def create_api_key(
        self,
        *,
        expiration: datetime | None,
        now: datetime,
        rng: Rng,
        scope: ApiScope = "admin",
    ) -> tuple[str, ApiKey]: ...

    def use_api_key(self, text: str, now: datetime) -> ApiKey:
        """The key if it may be used now (recording `now` as its last use),
        else KeyRejected saying why."""
        ...

    def list_api_keys(self) -> list[ApiKey]: ...
    def expire_api_key(self, id_or_prefix: int | str, now: datetime) -> ApiKey: ...

    # OAuth clients (the client-credentials grant) and their access tokens

    def create_oauth_client(
        self, *, scopes: Sequence[str], description: str, now: datetime, rng: Rng
    ) -> tuple[str, OAuthClient]:
        """(the secret, shown once; the client). Its id is the secret's prefix."""
        ...

    def list_oauth_clients(self) -> list[OAuthClient]: ...
    def delete_oauth_client(self, id_or_client_id: int | str) -> OAuthClient:
        """Delete the client; the tokens it was issued stop working at once."""
        ...

    def use_oauth_client(self, client_id: str, secret: str, now: datetime) -> OAuthClient:
        """The client if id and secret match (recording its use), else KeyRejected."""
        ...

    def issue_oauth_token(
        self, client: OAuthClient, *, scope: ApiScope, expiration: datetime, now: datetime,
        rng: Rng,
    ) -> tuple[str, ApiKey]:  # fmt: skip
        """A new access token (an API key that `list_api_keys` leaves out)."""
        ...

    # Pending interactive logins

    def create_pending_login(
        self,
        machine_key: MachinePublic,
        node_key: NodePublic,
        ephemeral: bool,
        now: datetime,
        rng: Rng,
    ) -> str: ...

    def get_pending_login(self, auth_id: str) -> PendingLogin | None: ...
    def delete_pending_login(self, auth_id: str) -> bool: ...
    def delete_pending_logins_before(self, before: datetime) -> int: ...

    # The policy groups each user's last identity-provider login carried (by email).
    def set_login_groups(self, email: str, groups: Sequence[str], now: datetime) -> None: ...
    def login_groups(self) -> dict[str, tuple[str, ...]]: ...
    # When each identity last logged in through the provider (by email).
    def last_logins(self) -> dict[str, datetime]: ...

    # People admitted at runtime (identity-provider logins not in tailnet.d), by email.
    # `admit_runtime_user` adds one or records its login; True when it is new.
    def admit_runtime_user(self, email: str, now: datetime) -> tuple[RuntimeUser, bool]: ...
    def delete_runtime_user(self, email: str) -> bool: ...
    def runtime_users(self) -> list[RuntimeUser]: ...

    # Audit trail and webhook outbox (server/store/_eventtables.py)

    def record_audit(
        self,
        *,
        at: datetime,
        actor: str,
        action: str,
        target: str | None,
        params: dict[str, Any],
        status: int,
        result: str,
        detail: str | None = None,
    ) -> AuditEntry: ...
    def list_audit(
        self, *, since: datetime | None = None, limit: int = 100
    ) -> list[AuditEntry]: ...
    def add_outbox(self, items: Sequence[tuple[str, str, bytes]]) -> list[OutboxItem]: ...
    def list_outbox(self) -> list[OutboxItem]: ...
    def outbox_attempted(self, item_id: int) -> None: ...
    def remove_outbox(self, item_id: int) -> None: ...
    def count_outbox(self) -> int: ...
