"""The store's logic in SQL that sqlite and PostgreSQL both run: one class, two backends.

`SqlStore` holds every `Store` method, gathered from one mixin per group of
tables: nodes (`_nodetables`), credentials (`_credentials`), people and
their logins (`_logintables`), the audit trail and webhook outbox
(`_eventtables`). A backend subclass supplies the connection handling that
`_db.SqlBackend` declares, and `close`.
"""

from __future__ import annotations

from ipaddress import IPv4Network, IPv6Network
from types import TracebackType
from typing import Self

from server.store._credentials import CredentialTables
from server.store._eventtables import EventTables
from server.store._logintables import LoginTables
from server.store._nodetables import NodeTables
from server.store.model import AllocationStrategy, Rng

__all__ = ["SqlStore"]


class SqlStore(NodeTables, CredentialTables, LoginTables, EventTables):
    def __init__(
        self,
        ipv4_prefix: IPv4Network | None,
        ipv6_prefix: IPv6Network | None,
        allocation: AllocationStrategy,
        rng: Rng,
    ) -> None:
        self._rng = rng
        self._generation = 0
        self.set_addressing(ipv4_prefix, ipv6_prefix, allocation)
        self._index = None

    def close(self) -> None:
        raise NotImplementedError

    @property
    def generation(self) -> int:
        return self._generation

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
