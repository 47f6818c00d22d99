"""Canary rollout with real tailscale clients: with settings.yaml `rollout`, a
new policy reaches the canary node first, and a node that is not a canary
only after the hold."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import ServerProcess, TailnetRepo, TailscaleNode, in_parallel, wait_for

USERS = """\
users:
  - {name: alice, email: alice@example.com, display_name: Alice}
  - {name: bob, email: bob@example.com, display_name: Bob}
"""
SETTINGS = "rollout: {canary: 'tag:canary', hold: 20s}\n"
POLICY = """{
  "tagOwners": {"tag:canary": ["alice@example.com"]},
  "acls": [{"action": "accept", "src": [%s], "dst": ["alice@example.com:*"]}]
}
"""
BEFORE = POLICY % '"alice@example.com"'
AFTER = POLICY % '"alice@example.com", "bob@example.com", "tag:canary"'


class Canary:
    def __init__(self, tmp: Path) -> None:
        files = {"users.yaml": USERS, "settings.yaml": SETTINGS, "policy.hujson": BEFORE}
        self.repo = TailnetRepo(tmp / "repo", files)
        self.server = ServerProcess(self.repo.path, tmp / "data", tmp / "tailnetd.log")
        self.tmp = tmp
        self.nodes: list[TailscaleNode] = []


@pytest.fixture(scope="module")
def canary(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Canary]:
    net = Canary(tmp_path_factory.mktemp("canary"))
    net.server.start()
    try:
        yield net
    finally:
        for node in net.nodes:
            node.stop()
        net.server.stop()


def test_the_canary_sees_the_new_policys_peers_first_the_others_after_the_hold(
    canary: Canary,
) -> None:
    server = canary.server
    plan = {
        "alice1": server.create_key("alice"),
        "bob1": server.create_key("bob"),
        "canary1": server.create_key("alice", "--tag", "tag:canary"),
    }
    nodes = {name: TailscaleNode(name, canary.tmp / "nodes") for name in plan}
    for node in nodes.values():
        node.extra_env = {"TS_DEBUG_ALWAYS_USE_DERP": "1"}
    canary.nodes += nodes.values()
    in_parallel(n.start for n in nodes.values())
    in_parallel((lambda n=n: n.up(server, plan[n.name])) for n in nodes.values())
    bob1, canary1 = nodes["bob1"], nodes["canary1"]
    wait_for(lambda: bob1.peer_names() == set(), 15, "bob1 to see no peer")
    assert canary1.peer_names() == set()

    revision = canary.repo.commit({"policy.hujson": AFTER}, "bob and the canaries reach alice")

    wait_for(lambda: canary1.peer_names() == {"alice1"}, 15, "the canary to see alice1")
    status = server.status()
    assert status["rollout"]["revision"] == revision and status["rollout"]["phase"] == "holding"
    assert status["serving"] != revision
    assert bob1.peer_names() == set()  # not a canary: still on the old policy

    wait_for(lambda: bob1.peer_names() == {"alice1"}, 45, "bob1 to see alice1 after the hold")
    status = server.status()
    assert status["serving"] == revision and status["rollout"]["phase"] == "promoted"
    assert canary1.peer_names() == {"alice1"}
