"""Canary rollout (settings.yaml `rollout`): a new commit reaches the canary
nodes first and everyone after the hold; a canary dropping off during the
hold, or an operator, stops it; a newer commit replaces the candidate."""

from __future__ import annotations

import asyncio
import logging
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path

import pytest

from server.admin_client import AdminError, SocketTarget, call
from server.app import Server
from server.protocol.keys import MachinePublic, NodePublic
from server.store.model import Registration
from tests.e2e.harness import TailnetRepo
from tests.unit.control_client import USERS, FakeClock, async_test, loopback_config

SETTINGS = "rollout: {canary: 'tag:canary', hold: 5m}\n"
POLICY = '{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:%d"]}]}\n'
FILES = {"users.yaml": USERS, "settings.yaml": SETTINGS, "policy.hujson": POLICY % 22}


@asynccontextmanager
async def rollout_server(tmp: Path) -> AsyncIterator[tuple[Server, TailnetRepo, FakeClock, int]]:
    """A server with the rollout setting and one canary node online."""
    clock = FakeClock()
    repo = TailnetRepo(tmp / "repo", FILES)
    with tempfile.TemporaryDirectory(prefix="tnd-") as data:
        config = loopback_config(repo.path, Path(data))
        srv = Server(config, log=logging.getLogger("t"), clock=clock)
        await srv.start()
        try:
            raw = (1).to_bytes(32, "big")
            node = srv.registry.register(Registration(
                machine_key=MachinePublic(raw), node_key=NodePublic(raw), hostname="canary-1",
                user=None, tags=("tag:canary",), now=clock(),
            ))  # fmt: skip
            srv.registry.connected(node.id)
            yield srv, repo, clock, node.id
        finally:
            await srv.stop()


async def hold(srv: Server, repo: TailnetRepo, port: int) -> str:
    revision = repo.commit({"policy.hujson": POLICY % port}, f"port {port}")
    await srv.on_revision(revision)
    return revision


def rollout(srv: Server) -> dict[str, object]:
    status = srv.status.to_json()["rollout"]
    assert isinstance(status, dict)
    return status


@async_test
async def test_a_commit_is_held_by_the_canaries_and_promoted_after_the_hold(
    tmp_path: Path,
) -> None:
    async with rollout_server(tmp_path) as (srv, repo, clock, canary):
        first = srv.status.serving
        revision = await hold(srv, repo, 443)

        assert srv.status.serving == first  # everyone else is still on the old commit
        assert srv.tailnet.candidate is not None and srv.tailnet.is_canary(canary)
        until = clock() + timedelta(minutes=5)
        assert rollout(srv) == {
            "revision": revision, "phase": "holding", "until": until.isoformat(), "reason": None,
        }  # fmt: skip
        clock.advance(timedelta(minutes=4))
        srv.commits.handle_timer(clock())
        assert rollout(srv)["phase"] == "holding"

        clock.advance(timedelta(minutes=1))
        srv.commits.handle_timer(clock())

        assert srv.status.serving == revision and srv.tailnet.source.id == revision
        assert srv.tailnet.candidate is None
        assert rollout(srv)["phase"] == "promoted"
        assert [e.outcome for e in srv.history.entries(limit=1)] == ["served"]


@async_test
async def test_a_canary_going_offline_during_the_hold_aborts_the_rollout(
    tmp_path: Path,
) -> None:
    async with rollout_server(tmp_path) as (srv, repo, clock, canary):
        first = srv.status.serving
        revision = await hold(srv, repo, 443)

        srv.registry.disconnected(canary, clock())

        status = rollout(srv)
        assert status["phase"] == "aborted"
        assert status["reason"] == "canary node canary-1 went offline during the hold"
        assert srv.tailnet.candidate is None and srv.tailnet.source.id == first
        assert srv.status.rejected is not None and srv.status.rejected.revision == revision
        # The hold's end changes nothing, and the same commit is not tried again.
        clock.advance(timedelta(minutes=10))
        srv.commits.handle_timer(clock())
        await srv.on_revision(revision)
        assert srv.status.serving == first and srv.tailnet.candidate is None


@async_test
async def test_an_operator_promotes_or_aborts_a_rollout_early(tmp_path: Path) -> None:
    async with rollout_server(tmp_path) as (srv, repo, _clock, _canary):
        sock = SocketTarget(srv.config.socket_path)
        promoted = await hold(srv, repo, 443)
        status = await asyncio.to_thread(call, sock, "POST", "/api/v1/rollout/promote")
        assert status["serving"] == promoted
        assert status["rollout"]["phase"] == "promoted"
        assert status["rollout"]["reason"] == "promoted by an administrator (socket)"

        aborted = await hold(srv, repo, 8443)
        status = await asyncio.to_thread(call, sock, "POST", "/api/v1/rollout/abort")
        assert status["serving"] == promoted
        assert status["rollout"] == {**status["rollout"], "revision": aborted, "phase": "aborted"}
        assert status["rejected"]["revision"] == aborted

        with pytest.raises(AdminError, match="no rollout is holding"):
            await asyncio.to_thread(call, sock, "POST", "/api/v1/rollout/abort")


@async_test
async def test_a_newer_commit_during_the_hold_replaces_the_candidate(tmp_path: Path) -> None:
    async with rollout_server(tmp_path) as (srv, repo, clock, _canary):
        first = srv.status.serving
        await hold(srv, repo, 443)
        clock.advance(timedelta(minutes=3))
        newer = await hold(srv, repo, 8443)

        assert srv.tailnet.candidate is not None and srv.tailnet.candidate.id == newer
        assert rollout(srv)["until"] == (clock() + timedelta(minutes=5)).isoformat()
        clock.advance(timedelta(minutes=3))  # the first candidate's hold would be over
        srv.commits.handle_timer(clock())
        assert srv.status.serving == first
        clock.advance(timedelta(minutes=2))
        srv.commits.handle_timer(clock())
        assert srv.status.serving == newer
