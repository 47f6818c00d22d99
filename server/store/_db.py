"""What the shared SQL needs from a backend: a connection, and transactions.

`SqlBackend` is the base of every table mixin of `SqlStore`
(`_nodetables`, `_credentials`, `_logintables`, `_eventtables`); a backend
subclass (`sqlite/`, `postgres/`) overrides its methods. SQL in the mixins
uses `?` placeholders and the common subset of both dialects (RETURNING,
TRUE); `_FOR_UPDATE` is the row lock where the backend has one.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

__all__ = ["Cursor", "Db", "SqlBackend"]


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...
    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...


class Db(Protocol):
    """A connection inside a transaction (or autocommit, for `_read`)."""

    def execute(self, sql: str, params: Sequence[Any] = (), /) -> Cursor: ...


class SqlBackend:
    _FOR_UPDATE = ""  # the row lock clause, where the backend has one

    def _write(
        self, *, index: bool = False, one_statement: bool = False
    ) -> AbstractContextManager[Db]:
        """A transaction: committed (and `generation` bumped) if the block returns.

        `index`: one that excludes every other writer of addresses and names,
        even in another process.

        `one_statement`: the block runs a single statement, which is a
        transaction of its own where the backend autocommits (sqlite: no
        BEGIN and COMMIT around it).

        The backend drops the index when anything but a StoreError ends the
        block: the store's own refusals come before the index changes.
        """
        raise NotImplementedError

    def _read(self) -> AbstractContextManager[Db]:
        raise NotImplementedError

    def _index_version(self, db: Db) -> int:
        """Inside `_write(index=True)`: the version the index must have to be current."""
        raise NotImplementedError
