"""Signed commits with real tailscale clients: with --trusted-signers, an unsigned commit
does not change what the clients see; the same change signed by a trusted key does."""

from __future__ import annotations

import subprocess
import time

from tests.e2e.harness import Member, Tailnet, tailnet_fixture, wait_for
from tests.unit.signing import SigningKey, make_key, signed_commit

USERS = """\
users:
  - {name: alice, email: alice@example.com, display_name: Alice}
  - {name: bob, email: bob@example.com, display_name: Bob}
"""
RULE = '{"acls": [{"action": "accept", "src": ["%s"], "dst": ["alice@example.com:*"]}]}\n'
ALICE_ONLY = RULE % "alice@example.com"
BOB_TO_ALICE = RULE % "bob@example.com"


def alice(net: Tailnet) -> SigningKey:
    """Alice's signing key, the one the server trusts."""
    return SigningKey(net.tmp / "keys" / "alice.key", "alice@example.com")


def trust_alice(net: Tailnet) -> None:
    """Before the server starts: alice signs the initial commit (the server
    serves nothing unsigned), and the server trusts her key alone."""
    key = make_key(net.tmp / "keys", "alice")
    allowed = net.tmp / "allowed_signers"
    allowed.write_text(key.allowed_line)
    subprocess.run(
        ["git", "-C", str(net.repo.path), "-c", "gpg.format=ssh", "-c",
         f"user.signingkey={key.private}", "commit", "-q", "--amend", "--no-edit", "-S"],
        check=True,
    )  # fmt: skip
    net.server.extra += ["--trusted-signers", str(allowed)]


def commit(net: Tailnet, policy: str, key: SigningKey | None) -> str:
    return signed_commit(net.repo.path, {"tailnet.d/policy.hujson": policy}, "policy", key)


signed = tailnet_fixture(
    {"users.yaml": USERS, "policy.hujson": ALICE_ONLY},
    members=[Member("alice1"), Member("bob1", user="bob")],
    prepare=trust_alice,
)


def test_an_unsigned_commit_does_not_change_peers_a_signed_one_does(signed: Tailnet) -> None:
    assert signed.server.status()["signer"] == "alice@example.com"
    bob1 = signed.nodes["bob1"]  # the fixture logged alice1 and bob1 in
    wait_for(lambda: bob1.peer_names() == set(), 15, "bob1 to see no peer")

    unsigned = commit(signed, BOB_TO_ALICE, None)
    status = wait_for(
        lambda: (
            (s := signed.server.status())["rejected"]
            and s["rejected"]["revision"] == unsigned
            and s
        ),
        15,
        "the unsigned commit to be rejected",
    )
    assert f"commit {unsigned[:12]} is not signed" in status["rejected"]["errors"][0]
    time.sleep(2)
    assert bob1.peer_names() == set()

    good = commit(signed, BOB_TO_ALICE, alice(signed))
    wait_for(lambda: bob1.peer_names() == {"alice1"}, 20, "bob1 to see alice1")
    status = signed.server.status()
    assert (status["serving"], status["signer"]) == (good, "alice@example.com")
    history = signed.server.admin("history")
    assert "rejected" in history and unsigned[:12] in history and good[:12] in history
