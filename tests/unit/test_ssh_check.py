"""SSH check mode: a `check` rule's request is held until approved, refused
or expired; an approval is remembered for the rule's checkPeriod; only the
destination node may ask; an identity-provider re-authentication must be the
connecting user."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from server.auth.pages import check_page
from server.auth.pending import LoginGone
from server.auth.sshcheck import SshChecks
from tests.unit.control_client import (
    USERS,
    ControlClient,
    Device,
    FakeClock,
    _read_all,
    async_test,
    join,
    preauth_key,
    running_server,
)

TIMEOUT = timedelta(minutes=10)
HOUR = timedelta(hours=1)


def make(clock: FakeClock) -> SshChecks:
    return SshChecks(
        base_url=lambda: "https://ctl.example",
        timeout=lambda: TIMEOUT,
        rng=os.urandom,
        log=logging.getLogger("tailnetd.test"),
    )


def auth_id_of(action: dict[str, Any]) -> str:
    return str(action["holdAndDelegate"].rsplit("auth_id=", 1)[1])


def test_a_held_login_is_accepted_once_approved_and_not_asked_again_within_the_period() -> None:
    async def run() -> None:
        clock = FakeClock()
        checks = make(clock)
        held = checks.action(1, 2, "root", "alice", HOUR, clock())
        assert "/machine/ssh/action/1/to/2?local_user=root&auth_id=" in held["holdAndDelegate"]
        auth_id = auth_id_of(held)
        assert f"tailnetd ssh approve {auth_id}" in held["message"]
        waiter = asyncio.create_task(checks.wait(auth_id, 2))
        await asyncio.sleep(0)
        assert not waiter.done()
        checks.approve(auth_id, "an administrator", clock())
        assert (await asyncio.wait_for(waiter, 1))["accept"] is True
        clock.advance(HOUR - timedelta(seconds=1))
        assert checks.action(1, 2, "root", "alice", HOUR, clock())["accept"] is True
        assert "holdAndDelegate" in checks.action(1, 2, "admin", "alice", HOUR, clock())
        assert "holdAndDelegate" in checks.action(3, 2, "root", "alice", HOUR, clock())
        clock.advance(timedelta(seconds=1))
        assert "holdAndDelegate" in checks.action(1, 2, "root", "alice", HOUR, clock())

    asyncio.run(run())


def test_refused_and_expired_checks_reject_with_the_reason() -> None:
    async def run() -> None:
        clock = FakeClock()
        checks = make(clock)
        refused = auth_id_of(checks.action(1, 2, "root", "alice", HOUR, clock()))
        expiring = auth_id_of(checks.action(1, 2, "root", "alice", HOUR, clock()))
        w1 = asyncio.create_task(checks.wait(refused, 2))
        w2 = asyncio.create_task(checks.wait(expiring, 2))
        await asyncio.sleep(0)
        checks.refuse(refused, "not now")
        clock.advance(TIMEOUT)
        checks.handle_timer(clock())
        r1, r2 = await asyncio.wait_for(asyncio.gather(w1, w2), 1)
        assert r1["reject"] is True and "not now" in r1["message"]
        assert r2["reject"] is True and "expired" in r2["message"]
        with pytest.raises(LoginGone, match="already expired"):
            checks.approve(expiring, "an administrator", clock())
        assert "holdAndDelegate" in checks.action(1, 2, "root", "alice", HOUR, clock())

    asyncio.run(run())


def test_another_node_cannot_wait_on_a_check() -> None:
    async def run() -> None:
        clock = FakeClock()
        checks = make(clock)
        auth_id = auth_id_of(checks.action(1, 2, "root", "alice", HOUR, clock()))
        answer = await asyncio.wait_for(checks.wait(auth_id, 7), 1)
        assert answer["reject"] is True

    asyncio.run(run())


def test_reauthentication_must_be_the_connecting_user() -> None:
    clock = FakeClock()
    checks = make(clock)
    auth_id = auth_id_of(checks.action(1, 2, "root", "alice", HOUR, clock()))
    with pytest.raises(LoginGone, match="signed in as bob"):
        checks.complete(auth_id, "bob", clock())
    assert checks.get(auth_id).state == "refused"  # type: ignore[union-attr]
    other = auth_id_of(checks.action(1, 2, "root", "alice", HOUR, clock()))
    assert checks.complete(other, "alice", clock()).state == "approved"


def test_a_new_policy_forgets_approvals() -> None:
    clock = FakeClock()
    checks = make(clock)
    checks.approve(auth_id_of(checks.action(1, 2, "root", "alice", HOUR, clock())), "op", clock())
    checks.forget_approvals()
    assert "holdAndDelegate" in checks.action(1, 2, "root", "alice", HOUR, clock())


def test_the_check_page_names_the_command_and_the_outcome() -> None:
    clock = FakeClock()
    checks = make(clock)
    auth_id = auth_id_of(checks.action(1, 2, "<root>", "alice", HOUR, clock()))
    status, text = check_page(checks.get(auth_id))
    assert status == 200 and f"tailnetd ssh approve {auth_id}" in text and "&lt;root&gt;" in text
    checks.refuse(auth_id, "not now")
    status, text = check_page(checks.get(auth_id))
    assert status == 410 and "not now" in text
    assert check_page(None)[0] == 404


POLICY = """\
{
  "tagOwners": {"tag:server": ["alice@example.com"]},
  "acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}],
  "ssh": [{"action": "check", "src": ["alice@example.com"], "dst": ["tag:server"],
           "users": ["root"], "checkPeriod": "2h"}],
}
"""


async def get(client: ControlClient, path: str) -> tuple[int, Any]:
    _, status, stream = await client.request(path, b"", method="GET")
    body = await _read_all(stream)
    return status, json.loads(body) if status == 200 else body


@async_test
async def test_the_destination_node_asks_over_noise_and_the_rule_s_period_counts(
    tmp_path: Path,
) -> None:
    files = {"users.yaml": USERS, "policy.hujson": POLICY}
    clock = FakeClock()
    async with running_server(tmp_path, files=files, clock=clock) as srv:
        server, laptop = Device("server1"), Device("laptop")
        sclient = await join(srv, server, auth_key=preauth_key(srv, tags=("tag:server",)))
        lclient = await join(srv, laptop)
        dst = srv.registry.by_node_key(server.node.public())
        src = srv.registry.by_node_key(laptop.node.public())
        assert dst is not None and src is not None
        path = f"/machine/ssh/action/{src.id}/to/{dst.id}?local_user=root"
        # The source node may not ask about the destination's checks.
        status, _ = await get(lclient, path)
        assert status == 403
        status, held = await get(sclient, path)
        assert status == 200 and "holdAndDelegate" in held
        auth_id = auth_id_of(held)
        follow = asyncio.create_task(get(sclient, held["holdAndDelegate"][len("https://unused") :]))
        await asyncio.sleep(0.1)
        assert not follow.done()
        srv.ssh_checks.approve(auth_id, "an administrator", clock())
        status, answer = await asyncio.wait_for(follow, 5)
        assert answer["accept"] is True
        clock.advance(timedelta(hours=2) - timedelta(seconds=1))
        assert (await get(sclient, path))[1]["accept"] is True
        clock.advance(timedelta(seconds=1))
        assert "holdAndDelegate" in (await get(sclient, path))[1]
        # A connection no check rule covers (the reverse direction) is rejected.
        status, answer = await get(
            lclient, f"/machine/ssh/action/{dst.id}/to/{src.id}?local_user=root"
        )
        assert answer["reject"] is True
        await sclient.close()
        await lclient.close()
