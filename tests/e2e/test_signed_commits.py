"""Signed commits with real tailscale clients: with --trusted-signers, an unsigned commit
does not change what the clients see; the same change signed by a trusted key does."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import ServerProcess, TailnetRepo, TailscaleNode, in_parallel, wait_for
from tests.unit.signing import SigningKey, make_key, signed_commit

USERS = """\
users:
  - {name: alice, email: alice@example.com, display_name: Alice}
  - {name: bob, email: bob@example.com, display_name: Bob}
"""
RULE = '{"acls": [{"action": "accept", "src": ["%s"], "dst": ["alice@example.com:*"]}]}\n'
ALICE_ONLY = RULE % "alice@example.com"
BOB_TO_ALICE = RULE % "bob@example.com"


class Signed:
    def __init__(self, tmp: Path) -> None:
        self.alice = make_key(tmp / "keys", "alice")
        allowed = tmp / "allowed_signers"
        allowed.write_text(self.alice.allowed_line)
        self.repo = TailnetRepo(tmp / "repo", {"users.yaml": USERS, "policy.hujson": ALICE_ONLY})
        # The initial commit, signed: the server serves nothing unsigned.
        subprocess.run(
            ["git", "-C", str(self.repo.path), "-c", "gpg.format=ssh", "-c",
             f"user.signingkey={self.alice.private}", "commit", "-q", "--amend", "--no-edit", "-S"],
            check=True,
        )  # fmt: skip
        self.server = ServerProcess(
            self.repo.path,
            tmp / "data",
            tmp / "tailnetd.log",
            extra=["--trusted-signers", str(allowed)],
        )
        self.tmp = tmp
        self.nodes: list[TailscaleNode] = []

    def commit(self, policy: str, key: SigningKey | None) -> str:
        return signed_commit(self.repo.path, {"tailnet.d/policy.hujson": policy}, "policy", key)


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Signed]:
    net = Signed(tmp_path_factory.mktemp("signed"))
    net.server.start()
    try:
        yield net
    finally:
        for node in net.nodes:
            node.stop()
        net.server.stop()


def test_an_unsigned_commit_does_not_change_peers_a_signed_one_does(signed: Signed) -> None:
    assert signed.server.status()["signer"] == "alice@example.com"
    plan = {"alice1": signed.server.create_key("alice"), "bob1": signed.server.create_key("bob")}
    nodes = {name: TailscaleNode(name, signed.tmp / "nodes") for name in plan}
    for node in nodes.values():
        node.extra_env = {"TS_DEBUG_ALWAYS_USE_DERP": "1"}
    signed.nodes += nodes.values()
    in_parallel(n.start for n in nodes.values())
    in_parallel((lambda n=n: n.up(signed.server, plan[n.name])) for n in nodes.values())
    bob1 = nodes["bob1"]
    wait_for(lambda: bob1.peer_names() == set(), 15, "bob1 to see no peer")

    unsigned = signed.commit(BOB_TO_ALICE, None)
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

    good = signed.commit(BOB_TO_ALICE, signed.alice)
    wait_for(lambda: bob1.peer_names() == {"alice1"}, 20, "bob1 to see alice1")
    status = signed.server.status()
    assert (status["serving"], status["signer"]) == (good, "alice@example.com")
    history = signed.server.admin("history")
    assert "rejected" in history and unsigned[:12] in history and good[:12] in history
