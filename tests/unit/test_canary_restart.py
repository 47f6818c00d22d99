"""A canary rollout outlives a restart: a server restarted during a hold
serves the last good commit to everyone and holds the branch tip for the
canaries again; a tip promoted before the restart serves everyone, an
aborted one stays refused. A hold's time runs only while a canary node is
online: a commit no canary has run is not promoted."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

from server.app import Server
from server.protocol.keys import MachinePublic, NodePublic
from server.sources.lifecycle import RESTARTED
from server.store.model import Registration
from server.tailnet.mapper import build_map
from tests.e2e.harness import TailnetRepo
from tests.unit.control_client import FakeClock, async_test, running_server
from tests.unit.test_canary_rollout import FILES, hold, rollout

HOLD = timedelta(minutes=5)


def add_node(srv: Server, n: int, name: str, tags: tuple[str, ...]) -> int:
    raw = n.to_bytes(32, "big")
    return srv.registry.register(Registration(
        machine_key=MachinePublic(raw), node_key=NodePublic(raw), hostname=name,
        user=None, tags=tags, now=srv.clock(),
    )).id  # fmt: skip


def ports(srv: Server, node_id: int) -> set[int]:
    """The destination ports in the packet filter `node_id` is sent."""
    sent = build_map(srv.tailnet.context_for(node_id), node_id, srv.clock())
    assert sent is not None
    rules: list[dict[str, Any]] = sent.top["PacketFilter"]
    return {p["Ports"]["First"] for r in rules for p in r["DstPorts"]}


@asynccontextmanager
async def restartable(
    tmp: Path,
) -> AsyncIterator[tuple[Callable[[], Any], TailnetRepo, FakeClock]]:
    """`start()` runs a server on the same repo and data dir each time."""
    clock = FakeClock()
    repo = TailnetRepo(tmp / "repo", FILES)
    with tempfile.TemporaryDirectory(prefix="tnd-") as data:

        def start() -> Any:
            return running_server(tmp, clock=clock, data_dir=Path(data))

        yield start, repo, clock


@async_test
async def test_a_restart_during_the_hold_holds_the_tip_for_the_canaries_again(
    tmp_path: Path,
) -> None:
    async with restartable(tmp_path) as (start, repo, clock):
        async with start() as srv:
            first = srv.status.serving
            canary = add_node(srv, 1, "canary-1", ("tag:canary",))
            other = add_node(srv, 2, "web-1", ("tag:web",))
            srv.registry.connected(canary)
            tip = await hold(srv, repo, 443)
            clock.advance(timedelta(minutes=3))  # stopped mid-hold

        async with start() as srv:
            # Everyone has the last good commit; the canaries hold the tip again.
            assert srv.status.serving == first and srv.tailnet.source.id == first
            assert srv.tailnet.candidate is not None and srv.tailnet.candidate.id == tip
            assert ports(srv, canary) == {443} and ports(srv, other) == {22}
            assert rollout(srv) == {
                "revision": tip, "phase": "holding", "until": None,
                "reason": f"{RESTARTED}; no tag:canary node is online: the hold starts when one is",
            }  # fmt: skip
            # No canary online: the hold waits, however long.
            clock.advance(timedelta(hours=1))
            srv.commits.handle_timer(clock())
            assert srv.status.serving == first and rollout(srv)["phase"] == "holding"
            # The canary is back: the whole hold runs from now.
            srv.registry.connected(canary)
            assert rollout(srv)["until"] == (clock() + HOLD).isoformat()
            assert rollout(srv)["reason"] == RESTARTED
            clock.advance(HOLD - timedelta(seconds=1))
            srv.commits.handle_timer(clock())
            assert srv.status.serving == first
            clock.advance(timedelta(seconds=1))
            srv.commits.handle_timer(clock())
            assert srv.status.serving == tip and rollout(srv)["phase"] == "promoted"
            assert ports(srv, other) == {443}

        async with start() as srv:  # promoted: a restart serves the tip to everyone
            assert srv.status.serving == tip and srv.tailnet.candidate is None


@async_test
async def test_a_tip_promoted_before_the_restart_is_served_to_everyone(tmp_path: Path) -> None:
    async with restartable(tmp_path) as (start, repo, clock):
        async with start() as srv:
            canary = add_node(srv, 1, "canary-1", ("tag:canary",))
            other = add_node(srv, 2, "web-1", ())
            srv.registry.connected(canary)
            tip = await hold(srv, repo, 443)
            clock.advance(HOLD)
            srv.commits.handle_timer(clock())
            assert srv.status.serving == tip

        async with start() as srv:
            assert srv.status.serving == tip and srv.tailnet.source.id == tip
            assert srv.tailnet.candidate is None and srv.status.rollout is None
            assert ports(srv, canary) == {443} and ports(srv, other) == {443}


@async_test
async def test_a_tip_aborted_before_the_restart_stays_refused(tmp_path: Path) -> None:
    async with restartable(tmp_path) as (start, repo, clock):
        async with start() as srv:
            first = srv.status.serving
            canary = add_node(srv, 1, "canary-1", ("tag:canary",))
            srv.registry.connected(canary)
            tip = await hold(srv, repo, 443)
            srv.registry.disconnected(canary, clock())
            assert rollout(srv)["phase"] == "aborted"

        async with start() as srv:
            assert srv.status.serving == first and srv.tailnet.candidate is None
            assert srv.status.rejected is not None and srv.status.rejected.revision == tip
            assert srv.status.rejected.errors[0].startswith("canary rollout aborted: ")
            srv.registry.connected(canary)
            await srv.on_revision(tip)  # the watcher's report changes nothing
            assert srv.status.serving == first and srv.tailnet.candidate is None
            assert ports(srv, canary) == {22}


@async_test
async def test_a_hold_with_no_canary_online_waits_for_one(tmp_path: Path) -> None:
    async with restartable(tmp_path) as (start, repo, clock):
        async with start() as srv:
            first = srv.status.serving
            canary = add_node(srv, 1, "canary-1", ("tag:canary",))
            tip = await hold(srv, repo, 443)
            assert rollout(srv)["until"] is None
            clock.advance(timedelta(days=1))
            srv.commits.handle_timer(clock())
            assert srv.status.serving == first and srv.tailnet.candidate is not None

            srv.registry.connected(canary)
            clock.advance(HOLD)
            srv.commits.handle_timer(clock())
            assert srv.status.serving == tip and rollout(srv)["phase"] == "promoted"
