"""Canary rollout with real tailscale clients: with settings.yaml `rollout`, a
new policy reaches the canary node first, and a node that is not a canary
only after the hold."""

from __future__ import annotations

from tests.e2e.harness import Member, Tailnet, tailnet_fixture, wait_for

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


canary = tailnet_fixture(
    {"users.yaml": USERS, "settings.yaml": SETTINGS, "policy.hujson": BEFORE},
    members=[
        Member("alice1"),
        Member("bob1", user="bob"),
        Member("canary1", key=("--tag", "tag:canary")),
    ],
)


def test_the_canary_sees_the_new_policys_peers_first_the_others_after_the_hold(
    canary: Tailnet,
) -> None:
    server = canary.server
    bob1, canary1 = canary.nodes["bob1"], canary.nodes["canary1"]  # logged in by the fixture
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
