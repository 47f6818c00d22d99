"""Commits reach the server as reports from several watchers, in any order:
whatever order they come in, the server ends up serving the branch tip."""

from __future__ import annotations

import asyncio
import logging
import tempfile
from pathlib import Path

from server.app import Server
from tests.e2e.harness import TailnetRepo
from tests.unit.control_client import USERS, async_test, loopback_config

POLICY = '{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:%d"]}]}\n'


@async_test
async def test_a_late_report_of_an_older_commit_does_not_replace_the_newer_one(
    tmp_path: Path,
) -> None:
    repo = TailnetRepo(tmp_path / "repo", {"users.yaml": USERS, "policy.hujson": POLICY % 22})
    with tempfile.TemporaryDirectory(prefix="tnd-") as data:
        server = Server(loopback_config(repo.path, Path(data)), log=logging.getLogger("test"))
        await server.start()
        try:
            older = repo.commit({"policy.hujson": POLICY % 80}, "older")
            newer = repo.commit({"policy.hujson": POLICY % 443}, "newer")
            # Reports of both, the older one last (a slow poll delivering late).
            await asyncio.gather(server.on_revision(newer), server.on_revision(older))
            assert server.status.serving == newer
            await server.on_revision(older)
            assert server.status.serving == newer
        finally:
            await server.stop()
