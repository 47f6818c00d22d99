"""Stopping the server with clients still polling: their sessions end cleanly
and their last-seen times reach the store before it closes."""

from __future__ import annotations

import logging
import tempfile
from datetime import timedelta
from pathlib import Path

from server.app import Server
from server.store import open_store
from tests.e2e.harness import TailnetRepo
from tests.unit.control_client import USERS, Device, FakeClock, async_test, loopback_config, poll


@async_test
async def test_stop_ends_live_sessions_before_closing_the_store(tmp_path: Path) -> None:
    repo = TailnetRepo(tmp_path / "repo", {"users.yaml": USERS})
    with tempfile.TemporaryDirectory(prefix="tnd-") as data:
        config = loopback_config(repo.path, Path(data))
        clock = FakeClock()
        server = Server(config, log=logging.getLogger("tailnetd.test"), clock=clock)
        await server.start()
        device = Device("laptop")
        client, _stream, first = await poll(server, device)
        node_id = first["Node"]["ID"]
        assert server.tailnet.is_online(node_id)

        clock.advance(timedelta(hours=1))
        await server.stop()  # the client is still connected

        with open_store(Path(data) / "tailnetd.sqlite") as store:
            node = store.get_node(node_id)
            assert node is not None and node.last_seen == clock()
        await client.close()
