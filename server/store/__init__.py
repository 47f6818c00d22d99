"""Runtime state that git cannot hold: nodes, keys, addresses, pre-auth keys,
API keys, pending logins and last-seen times. Users, policy, DNS and route approvals
live in git; the store names users and tags by string only.

`Store` is the interface; `open_store` returns the sqlite backend for a file
path and the PostgreSQL one for a `postgresql://` URL.
"""

from server.store._open import is_postgres_url, open_node_store, open_store, redact_url
from server.store._sqlstore import SqlStore
from server.store.interface import Store
from server.store.ipalloc import DEFAULT_IPV4_PREFIX, DEFAULT_IPV6_PREFIX
from server.store.model import (
    AddressExhausted,
    AllocationStrategy,
    ApiKey,
    Conflict,
    InvalidName,
    KeyRejected,
    Node,
    NotFound,
    PendingLogin,
    PreAuthKey,
    Rng,
    SchemaError,
    StoreError,
)
from server.store.sqlite import SqliteStore

__all__ = [
    "DEFAULT_IPV4_PREFIX",
    "DEFAULT_IPV6_PREFIX",
    "AddressExhausted",
    "AllocationStrategy",
    "ApiKey",
    "Conflict",
    "InvalidName",
    "KeyRejected",
    "Node",
    "NotFound",
    "PendingLogin",
    "PreAuthKey",
    "Rng",
    "SchemaError",
    "SqlStore",
    "SqliteStore",
    "Store",
    "StoreError",
    "is_postgres_url",
    "open_node_store",
    "open_store",
    "redact_url",
]
