"""Tailscale SSH end to end: the policy's `ssh` section decides who may log in.

server1 (tag:server) runs the SSH server of its own tailscaled (`tailscale up
--ssh`); alice1 and bob1 run `tailscale ssh root@server1 <command>`, which starts
OpenSSH's `ssh` with `tailscale nc` as its proxy. The packet filter lets both reach
port 22 from the first commit; only the later commit's `accept` rule lets alice in.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.e2e.harness import (
    ALICE_AND_BOB,
    Member,
    Tailnet,
    TailscaleNode,
    tailnet_fixture,
    wait_for,
)

POLICY = """\
{
  "groups": {"group:eng": ["alice@example.com"]},
  "tagOwners": {"tag:server": ["alice@example.com"]},
  "acls": [
    {"action": "accept", "src": ["group:eng", "bob@example.com"], "dst": ["tag:server:22"]},
  ],
}
"""
SSH_RULE = """\
  "ssh": [
    {"action": "accept", "src": ["group:eng"], "dst": ["tag:server"], "users": ["root"]},
  ],
}
"""
POLICY_WITH_SSH = POLICY.removesuffix("}\n") + SSH_RULE
REFUSED = "tailnet policy does not permit you to SSH"

pytestmark = pytest.mark.skipif(shutil.which("ssh") is None, reason="needs OpenSSH's ssh client")


net = tailnet_fixture(
    {"users.yaml": ALICE_AND_BOB, "policy.hujson": POLICY},
    members=[
        Member("server1", key=("--tag", "tag:server"), up=("--ssh",)),
        Member("alice1"),
        Member("bob1", user="bob"),
    ],
)


def ssh(node: TailscaleNode, target: str, *command: str) -> subprocess.CompletedProcess[str]:
    return node.cli("ssh", target, *command, timeout=90, check=False)


def test_ssh_is_refused_while_no_rule_allows_it(net: Tailnet) -> None:
    alice1 = net.nodes["alice1"]
    wait_for(lambda: "server1" in alice1.peer_names(), 20, "alice1 to see server1")
    out = ssh(alice1, "root@server1", "echo", "in")
    assert out.returncode != 0 and "in\n" not in out.stdout, net.diagnose()
    assert REFUSED in out.stderr, out.stderr


def test_an_accept_rule_lets_alice_run_a_command_as_root(net: Tailnet) -> None:
    net.repo.commit({"policy.hujson": POLICY_WITH_SSH}, "alice may ssh to the servers as root")
    alice1 = net.nodes["alice1"]

    # The new SSHPolicy reaches server1 a moment after the commit is served.
    out = wait_for(
        lambda: (o := ssh(alice1, "root@server1", "id", "-un")).returncode == 0 and o,
        60,
        "alice1's `tailscale ssh root@server1` to run",
        interval=2,
    )
    assert out.stdout == "root\n", out


def test_a_user_without_a_rule_is_refused(net: Tailnet) -> None:
    out = ssh(net.nodes["bob1"], "root@server1", "echo", "in")
    assert out.returncode != 0 and "in\n" not in out.stdout, net.diagnose()
    assert REFUSED in out.stderr, out.stderr


def test_a_local_user_the_rule_does_not_name_is_refused(net: Tailnet) -> None:
    out = ssh(net.nodes["alice1"], "nobody@server1", "echo", "in")
    assert out.returncode != 0 and "in\n" not in out.stdout, net.diagnose()
    assert REFUSED in out.stderr, out.stderr
