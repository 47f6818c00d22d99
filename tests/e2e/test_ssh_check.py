"""Tailscale SSH `check` mode with real clients: a `check` rule holds alice's
`tailscale ssh` until an operator approves it (`tailnetd ssh approve`), the
session shows where to go, and within `checkPeriod` it is not asked again; an
`accept` rule beside it lets bob straight in."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import (
    ALICE_AND_BOB,
    ServerProcess,
    TailnetRepo,
    TailscaleNode,
    diagnose,
    in_parallel,
    wait_for,
)

POLICY = """\
{
  "tagOwners": {"tag:server": ["alice@example.com"]},
  "acls": [{"action": "accept", "src": ["*"], "dst": ["tag:server:22"]}],
  "ssh": [
    {"action": "check", "src": ["alice@example.com"], "dst": ["tag:server"], "users": ["root"],
     "checkPeriod": "1h"},
    {"action": "accept", "src": ["bob@example.com"], "dst": ["tag:server"], "users": ["root"]},
  ],
}
"""

pytestmark = pytest.mark.skipif(shutil.which("ssh") is None, reason="needs OpenSSH's ssh client")


class Net:
    def __init__(self, tmp: Path) -> None:
        self.repo = TailnetRepo(
            tmp / "repo", {"users.yaml": ALICE_AND_BOB, "policy.hujson": POLICY}
        )
        self.server = ServerProcess(self.repo.path, tmp / "data", tmp / "tailnetd.log")
        self.nodes = {
            name: TailscaleNode(name, tmp / "nodes") for name in ("server1", "alice1", "bob1")
        }
        for node in self.nodes.values():
            node.extra_env = {
                "TS_DEBUG_ALWAYS_USE_DERP": "1",
                "XDG_CONFIG_HOME": str(node.dir / "config"),
            }

    def checks(self) -> list[dict[str, object]]:
        return list(json.loads(self.server.admin("ssh", "checks", "--json")))


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    net = Net(tmp_path_factory.mktemp("sshcheck"))
    net.server.start()
    try:
        in_parallel(n.start for n in net.nodes.values())
        keys = {
            "server1": net.server.create_key("alice", "--tag", "tag:server"),
            "alice1": net.server.create_key("alice"),
            "bob1": net.server.create_key("bob"),
        }
        in_parallel((lambda n=n: n.up(net.server, keys[n.name])) for n in net.nodes.values())
        net.nodes["server1"].cli("set", "--ssh")
        for name in ("alice1", "bob1"):
            node = net.nodes[name]
            wait_for(lambda n=node: "server1" in n.peer_names(), 30, f"{name} to see server1")
        yield net
    finally:
        for node in net.nodes.values():
            node.stop()
        net.server.stop()


def ssh(node: TailscaleNode, *command: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(node.bin / "tailscale"), f"--socket={node.socket}", "ssh", "root@server1", *command],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=node.env(),
    )


def test_an_accept_rule_beside_the_check_lets_bob_in_at_once(net: Net) -> None:
    out = ssh(net.nodes["bob1"], "id", "-un")
    stdout, stderr = out.communicate(timeout=90)
    assert out.returncode == 0 and stdout == "root\n", (stderr, diagnose(net.server, []))
    assert net.checks() == []


def test_a_check_rule_holds_alice_until_an_operator_approves(net: Net) -> None:
    held = ssh(net.nodes["alice1"], "id", "-un")
    try:
        (check,) = wait_for(net.checks, 60, "an SSH check to wait", interval=1)
        assert check["user"] == "alice" and check["local_user"] == "root"
        assert held.poll() is None  # the session waits
        net.server.admin("ssh", "approve", str(check["auth_id"]))
        stdout, stderr = held.communicate(timeout=60)
    finally:
        if held.poll() is None:
            held.kill()
            held.communicate()
    assert held.returncode == 0 and stdout == "root\n", stderr
    assert f"tailnetd ssh approve {check['auth_id']}" in stderr  # the message reached the user


def test_within_the_check_period_alice_is_not_asked_again(net: Net) -> None:
    again = ssh(net.nodes["alice1"], "id", "-un")
    stdout, stderr = again.communicate(timeout=90)
    assert again.returncode == 0 and stdout == "root\n", stderr
    assert net.checks() == []


def test_a_refused_check_keeps_alice_out(net: Net) -> None:
    net.repo.commit({"policy.hujson": POLICY + "\n"}, "a new commit forgets approvals")
    head = net.repo.head()
    wait_for(lambda: net.server.status()["serving"] == head, 30, "the commit to be served")
    held = ssh(net.nodes["alice1"], "echo", "in")
    try:
        (check,) = wait_for(net.checks, 60, "an SSH check to wait", interval=1)
        net.server.admin("ssh", "refuse", str(check["auth_id"]))
        stdout, stderr = held.communicate(timeout=60)
    finally:
        if held.poll() is None:
            held.kill()
            held.communicate()
    assert held.returncode != 0 and "in\n" not in stdout, stderr
