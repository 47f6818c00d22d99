"""Runtime users end to end: with `--oidc-admit-unknown true`, an identity that Dex
vouches for but tailnet.d/users.yaml does not declare logs in through a real headless
Chromium, becomes a runtime user and gets a real tailscaled 1.96.4 node that sees its
peers without a commit; `tailnetd users list` shows it with `source: runtime`, and
`tailnetd users delete` cuts its node off. The setup (Dex, Chromium) is
tests/e2e/test_oidc_login.py's."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import wait_for
from tests.e2e.test_login import Up
from tests.e2e.test_oidc_login import CHROMIUM, Net, browser_login

DAVE = "dave@example.com"


@pytest.fixture(scope="module")
def admitting(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    if not Path(CHROMIUM).exists() or shutil.which("go") is None:
        pytest.skip("needs Debian's chromium and Go (make test-tools)")
    net = Net(tmp_path_factory.mktemp("oidc-runtime"), extra=("--oidc-admit-unknown", "true"))
    net.start()
    try:
        yield net
    finally:
        net.stop()


def test_an_undeclared_identity_joins_as_a_runtime_user_and_can_be_deleted(
    admitting: Net,
) -> None:
    net = admitting
    bob1 = net.node("bob1")
    bob1.up(net.server, net.server.create_key("bob"))
    pc = net.node("dave-pc")
    up = Up(pc, net.server)
    text = browser_login(up.url(), net.tmp, DAVE, "staff,eng")
    assert "Device approved" in text and DAVE in text
    assert up.finish() == 0, up.output
    status = pc.status()
    assert status["BackendState"] == "Running"
    assert status["User"][str(status["Self"]["UserID"])]["LoginName"] == DAVE
    # group:eng from the provider lets dave and bob see each other, as for a git user
    wait_for(lambda: "bob1" in pc.peer_names(), 30, "dave-pc to see bob1")
    wait_for(lambda: "dave-pc" in bob1.peer_names(), 30, "bob1 to see dave-pc")

    users = {u["name"]: u for u in json.loads(net.server.admin("users", "list", "--json"))}
    assert users[DAVE]["source"] == "runtime" and users[DAVE]["nodes"] == 1
    assert users[DAVE]["last_login"] and users[DAVE]["groups"] == ["group:eng", "group:staff"]
    assert users["bob"]["source"] == "git"
    assert f"user {DAVE} admitted at runtime (not in tailnet.d)" in net.server.log()

    net.server.admin("users", "delete", DAVE)
    wait_for(lambda: "dave-pc" not in bob1.peer_names(), 30, "bob1 to lose dave-pc")
    assert DAVE not in net.server.admin("users", "list")
