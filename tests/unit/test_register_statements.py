"""How many SQL statements a registration costs, counted with sqlite's trace
callback: a pre-auth key registration, the first streaming map, an unchanged
Hostinfo, an endpoints update and the stream closing. Each is a fixed small
number (issue 11: the protocol path of a sparse registration), so a statement
added to the path shows up here."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.unit.control_client import (
    ControlClient,
    Device,
    async_test,
    poll,
    preauth_key,
    running_server,
)


@contextmanager
def traced(conn: sqlite3.Connection) -> Iterator[list[str]]:
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    try:
        yield statements
    finally:
        conn.set_trace_callback(None)


def kinds(statements: list[str]) -> list[str]:
    return [" ".join(s.split()[:2]) for s in statements]


@async_test
async def test_a_registration_and_its_first_map_cost_nine_statements(tmp_path: Path) -> None:
    async with running_server(tmp_path) as srv:
        conn = srv.store._conn  # type: ignore[attr-defined]
        first, _, _ = await poll(srv, Device("first"))  # the tailnet is not empty
        key = preauth_key(srv)
        dev = Device("laptop")
        with traced(conn) as statements:
            client, stream, first_map = await poll(srv, dev, auth_key=key)
        assert first_map["Node"]["Key"] == dev.node.public().text
        # Lookups by node key and machine key (one read), the key by its text;
        # one transaction: both keys free, mark the key used, the index's
        # version, the insert; the first map: disco key and last seen, one
        # statement of its own.
        assert kinds(statements) == [
            "SELECT id,",
            "SELECT id,",
            "BEGIN IMMEDIATE",
            "SELECT id,",
            "UPDATE preauth_keys",
            "PRAGMA data_version",
            "INSERT INTO",
            "COMMIT",
            "UPDATE nodes",
        ], statements

        with traced(conn) as statements:
            # The same Hostinfo again: nothing to write.
            status, _ = await client.map_lite(dev.map_body(stream=False))
            assert status == 200
        assert statements == []

        with traced(conn) as statements:
            status, _ = await client.map_lite(
                dev.map_body(stream=False, endpoints=["192.0.2.7:41641"])
            )
            assert status == 200
        assert kinds(statements) == ["UPDATE nodes"], statements

        node = srv.store.node_by_node_key(dev.node.public())
        assert node is not None
        with traced(conn) as statements:
            await client.close()
            for _ in range(200):  # until the server notices the stream closing
                if not srv.registry.is_online(node.id):
                    break
                await asyncio.sleep(0.01)
        assert not srv.registry.is_online(node.id)
        assert kinds(statements) == ["UPDATE nodes"], statements  # last seen
        del stream
        await first.close()


@async_test
async def test_a_used_single_use_key_is_refused_in_one_transaction(tmp_path: Path) -> None:
    async with running_server(tmp_path) as srv:
        key = preauth_key(srv)
        await (await poll(srv, Device("first"), auth_key=key))[0].close()
        dev = Device("second")
        async with await ControlClient.connect(srv.port, dev.machine) as client:
            status, reply = await client.register(dev.register_body(key))
        assert status == 200 and "already used" in reply["Error"]
        assert srv.store.node_by_machine_key(dev.machine.public()) is None
