"""Exit nodes with real clients of every admitted version, and traffic through them.

The exit node and the client each run in a network namespace the test creates
(tests/e2e/netns.py): neither has a route anywhere, and only the exit node's
namespace has the addresses the client fetches from (192.0.2.1, a documentation
address, and 10.213.0.1, a private one). The client reaches the control server
through a loopback bridge, and the web server behind the exit node only through
the exit node: userspace-networking tailscaled forwards exit traffic from its
netstack to its own namespace's network.

`autogroup:internet` is Tailscale's: public addresses only, so the private
10.213.0.1 stays out of reach through the exit node although the public one works.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.e2e.harness import (
    ALICE_AND_BOB,
    Member,
    Tailnet,
    TailscaleNode,
    diagnose,
    in_parallel,
    tailnet_fixture,
    wait_for,
)
from tests.e2e.netns import Namespace, available
from tests.tailscale_bin import MATRIX

pytestmark = pytest.mark.skipif(not available(), reason="needs root to create network namespaces")

POLICY = """\
{
  "tagOwners": {"tag:exit": ["alice@example.com"]},
  "autoApprovers": {"exitNode": ["tag:exit"]},
  "acls": [
    {"action": "accept", "src": ["alice@example.com"],
     "dst": ["tag:exit:*", "alice@example.com:*", "autogroup:internet:*"]},
  ],
}
"""
PUBLIC, PRIVATE = "192.0.2.1", "10.213.0.1"  # only inside the exit node's namespace
WEB_PORT = 8099
TOKEN = "reached through the exit node\n"


net = tailnet_fixture({"users.yaml": ALICE_AND_BOB, "policy.hujson": POLICY})


class Spaces:
    """The namespaces a module's tests make, and the web servers inside them."""

    def __init__(self, net: Tailnet) -> None:
        self.net = net
        self.spaces: list[Namespace] = []
        self.procs: list[subprocess.Popen[bytes]] = []

    def namespace(self, role: str) -> Namespace:
        ns = Namespace(f"tnd{os.getpid()}{role}")
        self.spaces.append(ns)
        ns.bridge(self.net.server.port)
        return ns

    def node(self, name: str, version: str, ns: Namespace) -> TailscaleNode:
        node = self.net.node(name, version=version)
        node.prefix = ns.prefix()
        return node

    def web_server(self, ns: Namespace) -> None:
        """An HTTP server inside `ns` on every address it has."""
        root = self.net.tmp / f"www-{ns.name}"
        root.mkdir()
        (root / "proof.txt").write_text(TOKEN)
        ns.add_address(f"{PUBLIC}/32")
        ns.add_address(f"{PRIVATE}/32")
        cmd = [sys.executable, "-m", "http.server", str(WEB_PORT), "--directory", str(root)]
        proc = subprocess.Popen(
            [*ns.prefix(), *cmd], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.procs.append(proc)

    def close(self) -> None:
        for proc in self.procs:
            proc.terminate()
            proc.wait(10)
        for ns in self.spaces:
            ns.delete()


@pytest.fixture(scope="module")
def spaces(net: Tailnet) -> Iterator[Spaces]:
    made = Spaces(net)
    try:
        yield made
    finally:
        made.close()


def fetch(client: TailscaleNode, ns: Namespace, address: str) -> str | None:
    """GET http://address/proof.txt through the client's SOCKS5 proxy, from inside
    its namespace; None when it cannot be reached."""
    out = subprocess.run(
        [
            *ns.prefix(),
            "curl",
            "-sS",
            "--max-time",
            "8",
            "--socks5",
            f"127.0.0.1:{client.socks_port}",
            f"http://{address}:{WEB_PORT}/proof.txt",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return out.stdout if out.returncode == 0 else None


@pytest.mark.parametrize("version", MATRIX)
def test_a_client_s_traffic_flows_through_an_auto_approved_exit_node(
    net: Tailnet, spaces: Spaces, version: str
) -> None:
    minor = version.split(".")[1]
    exit_ns, client_ns = spaces.namespace(f"e{minor}"), spaces.namespace(f"c{minor}")
    spaces.web_server(exit_ns)
    exit_node = spaces.node(f"exit-v{minor}", version, exit_ns)
    client = spaces.node(f"client-v{minor}", version, client_ns)
    in_parallel(n.start for n in (exit_node, client))
    try:
        tagged = net.server.create_key("alice", "--tag", "tag:exit")
        plain = net.server.create_key("alice")
        in_parallel(
            [
                lambda: exit_node.up(net.server, tagged, "--advertise-exit-node"),
                lambda: client.up(net.server, plain),
            ]
        )
        wait_for(
            lambda: (client.peer(exit_node.name) or {}).get("ExitNodeOption"),
            30,
            "the client to be offered the exit node",
        )
        listed = client.cli("exit-node", "list").stdout
        assert exit_node.name in listed, listed
        assert fetch(client, client_ns, PUBLIC) is None  # no way there without it
        client.cli("set", f"--exit-node={exit_node.ip()}")
        wait_for(
            lambda: (client.peer(exit_node.name) or {}).get("ExitNode"),
            30,
            "the client to use the exit node",
        )
        assert wait_for(lambda: fetch(client, client_ns, PUBLIC), 30, "the fetch") == TOKEN
        # autogroup:internet covers public addresses, not the exit node's private network.
        assert fetch(client, client_ns, PRIVATE) is None
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{diagnose(net.server, [exit_node, client])}") from None
    finally:
        in_parallel(n.stop for n in (exit_node, client))
        for n in (exit_node, client):
            net.server.admin("nodes", "delete", n.name)


def test_an_exit_node_approved_in_git_is_offered_to_allowed_peers_only(net: Tailnet) -> None:
    """No autoApprover: routes.yaml approves the machine's 0.0.0.0/0 and ::/0.
    bob, whom the policy gives nothing, is not offered it."""
    exit_node, client, bob = net.join(
        [
            Member("gitexit", up=("--advertise-exit-node",)),
            Member("gitclient"),
            Member("bobclient", user="bob"),
        ]
    )
    wait_for(lambda: client.peer("gitexit") is not None, 30, "the client to see gitexit")
    assert not (client.peer("gitexit") or {}).get("ExitNodeOption")  # not approved yet
    nodes = net.server.nodes_json()
    (mkey,) = [n["machine_key"] for n in nodes if n["name"] == "gitexit"]
    routes = f"routes:\n  - {{machine: {mkey}, node: gitexit, routes: [0.0.0.0/0, '::/0']}}\n"
    net.repo.commit({"routes.yaml": routes}, "approve gitexit as an exit node")
    wait_for(
        lambda: (client.peer("gitexit") or {}).get("ExitNodeOption"),
        30,
        "git's approval to reach the client",
    )
    assert "gitexit" in client.cli("exit-node", "list").stdout
    assert bob.peer("gitexit") is None
    assert "gitexit" not in bob.cli("exit-node", "list", check=False).stdout
