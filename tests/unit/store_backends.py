"""The store's two backends as tests see them: open a database by name, twice if need be.

`Backend.open(name)` opens the database called `name` in this test (the same
one again for the same name: a restart, or a second process); every test gets
fresh ones. sqlite keeps them as files in the test's temporary directory,
PostgreSQL as databases created on the session's server and dropped after.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any

import psycopg

from server.store import SqlStore, open_store
from tests.pgserver import PgServer

__all__ = ["Backend", "PostgresBackend", "SqliteBackend"]


class Backend:
    kind: str

    def where(self, name: str = "state") -> str | Path:
        raise NotImplementedError

    def open(self, name: str = "state", **options: Any) -> SqlStore:
        return open_store(self.where(name), **options)

    def written_bytes(self) -> bytes:
        """Everything the database has written to disk so far."""
        raise NotImplementedError

    def drop(self, name: str) -> None:
        """Forget the database called `name` (its stores closed)."""
        raise NotImplementedError

    def cleanup(self) -> None:
        pass


class SqliteBackend(Backend):
    kind = "sqlite"

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def where(self, name: str = "state") -> Path:
        return self.directory / f"{name}.db"

    def written_bytes(self) -> bytes:
        return b"".join(p.read_bytes() for p in self.directory.rglob("*") if p.is_file())

    def drop(self, name: str) -> None:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self.where(name)}{suffix}").unlink(missing_ok=True)


class PostgresBackend(Backend):
    kind = "postgres"

    def __init__(self, server: PgServer) -> None:
        self.server = server
        self.databases: dict[str, str] = {}

    def where(self, name: str = "state") -> str:
        if name not in self.databases:
            database = f"t_{uuid.uuid4().hex[:12]}_{re.sub(r'[^a-z0-9]+', '_', name.lower())}"
            self.admin(f"CREATE DATABASE {database}")
            self.databases[name] = database
        return self.server.url(self.databases[name])

    def admin(self, sql: str) -> None:
        with psycopg.connect(self.server.url(), autocommit=True) as conn:
            conn.execute(sql.encode())

    def written_bytes(self) -> bytes:
        self.admin("CHECKPOINT")  # table files as well as the write-ahead log
        files = (p for p in self.server.data_dir.rglob("*") if p.is_file())
        return b"".join(p.read_bytes() for p in files)

    def drop(self, name: str) -> None:
        database = self.databases.pop(name)
        self.admin(f"DROP DATABASE {database} WITH (FORCE)")

    def cleanup(self) -> None:
        for name in list(self.databases):
            self.drop(name)
