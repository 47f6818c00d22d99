"""Schema migrations: applied once, in order, each all or nothing, on both backends."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import psycopg
import pytest

from server.store import SchemaError, open_store
from server.store.migrations import (
    MIGRATIONS,
    POSTGRES_MIGRATIONS,
    Migration,
    schema_version,
)
from server.store.postgres import apply_postgres_migrations
from server.store.sqlite import apply_migrations
from tests.pgserver import PgServer
from tests.unit.store_backends import PostgresBackend
from tests.unit.test_store import add_node


def connect(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(str(path), isolation_level=None)


def tables(conn: sqlite3.Connection) -> set[str]:
    return {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def test_open_migrates_once_and_reopening_is_a_no_op(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with open_store(path) as store:
        node = add_node(store, 1)
    conn = connect(path)
    assert schema_version(conn) == len(MIGRATIONS)
    assert apply_migrations(conn) == []
    rows = conn.execute("SELECT version FROM schema_version").fetchall()
    assert rows == [(m.version,) for m in MIGRATIONS]
    conn.close()
    with open_store(path) as store:
        assert store.list_nodes() == [node]


def test_a_database_from_a_newer_tailnetd_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    open_store(path).close()
    conn = connect(path)
    conn.execute("INSERT INTO schema_version VALUES (99, 'from the future')")
    conn.close()
    with pytest.raises(SchemaError, match="schema version 99, newer than this tailnetd"):
        open_store(path)


def test_a_failing_migration_leaves_the_previous_version_intact(tmp_path: Path) -> None:
    conn = connect(tmp_path / "state.db")
    broken = Migration(2, "broken", ("CREATE TABLE half_done (x)", "THIS IS NOT SQL"))
    with pytest.raises(sqlite3.OperationalError):
        apply_migrations(conn, (MIGRATIONS[0], broken))
    assert schema_version(conn) == 1
    assert "half_done" not in tables(conn) and "nodes" in tables(conn)
    fixed = Migration(2, "fixed", ("CREATE TABLE half_done (x)",))
    assert apply_migrations(conn, (MIGRATIONS[0], fixed)) == [2]
    assert "half_done" in tables(conn)


def test_migrations_must_be_numbered_without_gaps(tmp_path: Path) -> None:
    conn = connect(tmp_path / "state.db")
    with pytest.raises(ValueError, match="without gaps"):
        apply_migrations(conn, (MIGRATIONS[0], Migration(3, "skips 2", ())))


def test_both_backends_number_and_describe_their_migrations_alike() -> None:
    assert [(m.version, m.description) for m in POSTGRES_MIGRATIONS] == [
        (m.version, m.description) for m in MIGRATIONS
    ]


# The same on PostgreSQL


def pg_tables(conn: psycopg.Connection[Any]) -> set[str]:
    query = "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
    return {name for (name,) in conn.execute(query).fetchall()}


def test_postgres_open_migrates_once_and_reopening_is_a_no_op(pg_server: PgServer) -> None:
    backend = PostgresBackend(pg_server)
    try:
        with backend.open() as store:
            node = add_node(store, 1)
        with psycopg.connect(backend.where(), autocommit=True) as conn:
            assert schema_version(conn) == len(POSTGRES_MIGRATIONS)
            assert apply_postgres_migrations(conn) == []
            rows = conn.execute("SELECT version FROM schema_version ORDER BY version").fetchall()
            assert rows == [(m.version,) for m in POSTGRES_MIGRATIONS]
        with backend.open() as store:
            assert store.list_nodes() == [node]
    finally:
        backend.cleanup()


def test_postgres_database_from_a_newer_tailnetd_is_refused(pg_server: PgServer) -> None:
    backend = PostgresBackend(pg_server)
    try:
        backend.open().close()
        with psycopg.connect(backend.where(), autocommit=True) as conn:
            conn.execute("INSERT INTO schema_version VALUES (99, 'from the future')")
        with pytest.raises(SchemaError, match="schema version 99, newer than this tailnetd"):
            backend.open()
    finally:
        backend.cleanup()


def test_postgres_failing_migration_leaves_the_previous_version_intact(
    pg_server: PgServer,
) -> None:
    backend = PostgresBackend(pg_server)
    try:
        with psycopg.connect(backend.where(), autocommit=True) as conn:
            first = POSTGRES_MIGRATIONS[0]
            broken = Migration(2, "broken", ("CREATE TABLE half_done (x int)", "NOT SQL"))
            with pytest.raises(psycopg.errors.SyntaxError):
                apply_postgres_migrations(conn, (first, broken))
            assert schema_version(conn) == 1
            assert "half_done" not in pg_tables(conn) and "nodes" in pg_tables(conn)
            fixed = Migration(2, "fixed", ("CREATE TABLE half_done (x int)",))
            assert apply_postgres_migrations(conn, (first, fixed)) == [2]
            assert "half_done" in pg_tables(conn)
            with pytest.raises(ValueError, match="without gaps"):
                apply_postgres_migrations(conn, (first, Migration(3, "skips 2", ())))
    finally:
        backend.cleanup()
