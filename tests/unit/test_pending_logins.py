"""Pending interactive logins: each waits, then is approved, refused or
expires exactly once; the waiting register request hears which; the node is
written through the registry and keeps its identity on re-authentication."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from server.auth.pages import login_page
from server.auth.pending import (
    MAX_PENDING,
    TRANSITIONS,
    CompletedLogin,
    LoginGone,
    PendingLogin,
    PendingLogins,
)
from server.protocol.keys import MachinePrivate, NodePrivate, NodePublic
from server.store import open_store
from server.store.interface import Store
from server.tailnet import NodeChange, NodeRegistry
from server.wire import Hostinfo
from tests.unit.control_client import FakeClock

TIMEOUT = timedelta(minutes=10)
ZERO = NodePublic.zero()
LOG = logging.getLogger("tailnetd.test")


@pytest.fixture
def store() -> Iterator[Store]:
    s = open_store(Path(":memory:"))
    yield s
    s.close()


def make(store: Store, clock: FakeClock) -> tuple[PendingLogins, NodeRegistry]:
    registry = NodeRegistry(store, log=LOG)
    logins = PendingLogins(
        store,
        registry,
        base_url=lambda: "https://ctl.example",
        timeout=lambda: TIMEOUT,
        clock=clock,
        rng=os.urandom,
        log=LOG,
    )
    return logins, registry


def begin(
    logins: PendingLogins, clock: FakeClock, machine: MachinePrivate | None = None
) -> tuple[MachinePrivate, NodePublic, PendingLogin]:
    machine = machine or MachinePrivate.generate()
    node_key = NodePrivate.generate().public()
    login = logins.begin(
        machine.public(), node_key, False, ZERO, clock(), hostinfo=Hostinfo(hostname="laptop")
    )
    return machine, node_key, login


def test_begin_gives_a_url_on_the_server_and_a_store_record(store: Store) -> None:
    clock = FakeClock()
    logins, _ = make(store, clock)
    _, node_key, login = begin(logins, clock)
    assert login.url == f"https://ctl.example/register/{login.auth_id}"
    assert login.state == "waiting" and login.expires == clock() + TIMEOUT
    record = store.get_pending_login(login.auth_id)
    assert record is not None and record.node_key == node_key


def test_complete_registers_the_node_through_the_registry_and_wakes_the_waiter(
    store: Store,
) -> None:
    async def run() -> None:
        clock = FakeClock()
        logins, registry = make(store, clock)
        changes: list[NodeChange] = []
        registry.subscribe(changes.append)
        completed: list[CompletedLogin] = []
        logins.subscribe(completed.append)
        machine, node_key, login = begin(logins, clock)
        waiter = asyncio.create_task(logins.wait(login.auth_id, machine.public()))
        await asyncio.sleep(0)
        assert not waiter.done()  # blocks until someone approves
        node = logins.complete(login.auth_id, "alice", ("eng",))
        outcome = await asyncio.wait_for(waiter, 1)
        assert outcome.state == "approved" and outcome.node == node
        assert node.user == "alice" and node.node_key == node_key and node.hostname == "laptop"
        assert [c.kind for c in changes] == ["topology"]
        assert completed[0].groups == ("eng",) and completed[0].user == "alice"
        assert store.get_pending_login(login.auth_id) is None
        assert logins.get(login.auth_id).state == "approved"  # type: ignore[union-attr]

    asyncio.run(run())


def test_refuse_wakes_the_waiter_with_the_reason(store: Store) -> None:
    async def run() -> None:
        clock = FakeClock()
        logins, registry = make(store, clock)
        machine, _, login = begin(logins, clock)
        waiter = asyncio.create_task(logins.wait(login.auth_id, machine.public()))
        await asyncio.sleep(0)
        logins.refuse(login.auth_id, "not a company laptop")
        outcome = await asyncio.wait_for(waiter, 1)
        assert outcome.state == "refused" and outcome.reason == "not a company laptop"
        assert registry.nodes() == []
        with pytest.raises(LoginGone, match="already refused"):
            logins.complete(login.auth_id, "alice")

    asyncio.run(run())


def test_expiry_wakes_the_waiter_and_approval_comes_too_late(store: Store) -> None:
    async def run() -> None:
        clock = FakeClock()
        logins, registry = make(store, clock)
        machine, _, login = begin(logins, clock)
        waiter = asyncio.create_task(logins.wait(login.auth_id, machine.public()))
        assert logins.get_timer() == login.expires
        clock.advance(TIMEOUT - timedelta(seconds=1))
        assert logins.handle_timer(clock()) == []
        clock.advance(timedelta(seconds=1))
        assert [p.auth_id for p in logins.handle_timer(clock())] == [login.auth_id]
        outcome = await asyncio.wait_for(waiter, 1)
        assert outcome.state == "expired" and "10 minutes" in outcome.reason
        assert "tailscale up again" in outcome.reason
        with pytest.raises(LoginGone, match="already expired"):
            logins.complete(login.auth_id, "alice")
        assert registry.nodes() == [] and logins.get_timer() is None

    asyncio.run(run())


def test_approval_after_the_deadline_but_before_the_timer_ran_is_refused(store: Store) -> None:
    clock = FakeClock()
    logins, registry = make(store, clock)
    _, _, login = begin(logins, clock)
    clock.advance(TIMEOUT)
    with pytest.raises(LoginGone, match="expired"):
        logins.complete(login.auth_id, "alice")
    assert registry.nodes() == []


def test_a_client_gone_while_waiting_still_gets_its_node(store: Store) -> None:
    async def run() -> None:
        clock = FakeClock()
        logins, registry = make(store, clock)
        machine, node_key, login = begin(logins, clock)
        waiter = asyncio.create_task(logins.wait(login.auth_id, machine.public()))
        await asyncio.sleep(0)
        waiter.cancel()  # the HTTP/2 stream was reset
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert logins.get(login.auth_id).state == "waiting"  # type: ignore[union-attr]
        node = logins.complete(login.auth_id, "bob")
        assert registry.by_node_key(node_key) == node
        # A late Followup of the same machine hears the outcome at once.
        outcome = await asyncio.wait_for(logins.wait(login.auth_id, machine.public()), 1)
        assert outcome.state == "approved" and outcome.node == node

    asyncio.run(run())


def test_another_machine_cannot_wait_on_a_login(store: Store) -> None:
    async def run() -> None:
        clock = FakeClock()
        logins, _ = make(store, clock)
        _, _, login = begin(logins, clock)
        other = MachinePrivate.generate().public()
        outcome = await asyncio.wait_for(logins.wait(login.auth_id, other), 1)
        assert outcome.state == "expired" and outcome.node is None

    asyncio.run(run())


def test_unknown_login_is_a_clear_error(store: Store) -> None:
    logins, _ = make(store, FakeClock())
    with pytest.raises(LoginGone, match="unknown"):
        logins.complete("nope", "alice")


def test_a_new_login_of_the_same_machine_replaces_the_old_one(store: Store) -> None:
    clock = FakeClock()
    logins, _ = make(store, clock)
    machine, _, first = begin(logins, clock)
    _, _, second = begin(logins, clock, machine)
    assert [p.auth_id for p in logins.waiting()] == [second.auth_id]
    assert logins.get(first.auth_id).state == "expired"  # type: ignore[union-attr]


def test_reauthentication_keeps_the_node_and_its_addresses(store: Store) -> None:
    clock = FakeClock()
    logins, registry = make(store, clock)
    machine, old_key, login = begin(logins, clock)
    before = logins.complete(login.auth_id, "alice")
    new_key = NodePrivate.generate().public()
    again = logins.begin(machine.public(), new_key, False, old_key, clock())
    after = logins.complete(again.auth_id, "alice")
    assert (after.id, after.ipv4, after.ipv6) == (before.id, before.ipv4, before.ipv6)
    assert after.node_key == new_key and len(registry.nodes()) == 1


def test_waiting_logins_are_bounded(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("server.auth.pending.MAX_PENDING", 3)
    clock = FakeClock()
    logins, _ = make(store, clock)
    made = [begin(logins, clock)[2] for _ in range(4)]
    assert [p.auth_id for p in logins.waiting()] == [p.auth_id for p in made[1:]]
    assert MAX_PENDING >= 1024


def test_every_state_and_input_pair() -> None:
    states = ("waiting", "approved", "refused", "expired")
    inputs = ("complete", "refuse", "expire")
    allowed = {(s, i) for s in states for i in inputs if (s, i) in TRANSITIONS}
    assert allowed == {("waiting", "complete"), ("waiting", "refuse"), ("waiting", "expire")}


def test_the_page_says_what_to_do_and_escapes_the_hostname(store: Store) -> None:
    clock = FakeClock()
    logins, _ = make(store, clock)
    machine = MachinePrivate.generate()
    login = logins.begin(
        machine.public(),
        NodePrivate.generate().public(),
        False,
        ZERO,
        clock(),
        hostinfo=Hostinfo(hostname="<script>x</script>"),
    )
    status, text = login_page(login, login.auth_id, clock())
    assert status == 200
    assert f"tailnetd nodes register --user NAME {login.auth_id}" in text
    assert "<script>" not in text and "&lt;script&gt;" in text
    assert "expires in about 10 minutes" in text
    assert "http" not in text.split("<body>")[0].replace('name="viewport"', "")
    logins.refuse(login.auth_id, "not today")
    status, text = login_page(logins.get(login.auth_id), login.auth_id, clock())
    assert status == 410 and "not today" in text
    status, text = login_page(None, "zzz", clock())
    assert status == 404 and "tailscale up" in text
