"""Fixtures for the store tests: every such test runs on sqlite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from server.store import SqlStore
from tests.pgserver import PgServer, PgUnavailable
from tests.unit.store_backends import Backend, PostgresBackend, SqliteBackend


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One PostgreSQL server for the session, on a unix socket in a temp directory."""
    try:
        server = PgServer.start()
    except PgUnavailable as exc:
        pytest.skip(f"no PostgreSQL: {exc}")
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    chosen: Backend
    if request.param == "sqlite":
        chosen = SqliteBackend(tmp_path / "db")
    else:
        chosen = PostgresBackend(request.getfixturevalue("pg_server"))
    yield chosen
    chosen.cleanup()


@pytest.fixture
def store(backend: Backend) -> Iterator[SqlStore]:
    with backend.open() as s:
        yield s
