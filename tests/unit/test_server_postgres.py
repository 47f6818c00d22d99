"""The whole server on PostgreSQL: a node registered through the control
protocol is in the database, and a restarted server knows it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.pgserver import PgServer
from tests.unit.control_client import ControlClient, Device, async_test, preauth_key, running_server
from tests.unit.store_backends import PostgresBackend


@pytest.fixture
def database(pg_server: PgServer) -> Iterator[str]:
    backend = PostgresBackend(pg_server)
    yield backend.where()
    backend.cleanup()


@async_test
async def test_a_node_registered_on_postgres_survives_a_restart(
    tmp_path: Path, database: str
) -> None:
    dev = Device("laptop")
    async with running_server(tmp_path / "a", database=database) as srv:
        async with await ControlClient.connect(srv.port, dev.machine) as client:
            status, reply = await client.register(dev.register_body(preauth_key(srv, "alice")))
        assert status == 200 and reply["MachineAuthorized"] is True
        node = srv.store.node_by_node_key(dev.node.public())
        assert node is not None and node.user == "alice" and node.ipv4 is not None
    # Another server (a restart, or a second replica) on the same database.
    async with running_server(tmp_path / "b", database=database) as srv:
        assert srv.store.node_by_node_key(dev.node.public()) == node
        async with await ControlClient.connect(srv.port, dev.machine) as client:
            status, reply = await client.register(dev.register_body())
        assert status == 200 and reply["MachineAuthorized"] is True


@async_test
async def test_a_node_registered_on_one_replica_reaches_the_other_within_a_second(
    tmp_path: Path, database: str
) -> None:
    dev = Device("laptop")
    async with (
        running_server(tmp_path / "a", database=database) as a,
        running_server(tmp_path / "b", database=database) as b,
    ):
        async with await ControlClient.connect(a.port, dev.machine) as client:
            status, _ = await client.register(dev.register_body(preauth_key(a, "alice")))
        assert status == 200
        node = a.store.node_by_node_key(dev.node.public())
        assert node is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 1.0
        while b.tailnet.record(node.id) != node:
            assert loop.time() < deadline, "the other replica did not learn of the node"
            await asyncio.sleep(0.02)
        assert b.tailnet.serves(node.id)
