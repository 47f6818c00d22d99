"""People log in with real tailscaled 1.96.4: `tailscale up` without a key
prints a login URL on this server and waits; the operator approves from the
CLI and the same `tailscale up` finishes, Running, with its peers."""

from __future__ import annotations

import json
import re
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import ALICE_AND_BOB, ServerProcess, TailnetRepo, TailscaleNode, wait_for

URL = re.compile(r"(http://127\.0\.0\.1:\d+/register/[a-z0-9]+)")


class Net:
    def __init__(self, tmp: Path) -> None:
        self.repo = TailnetRepo(tmp / "repo", {"users.yaml": ALICE_AND_BOB})
        self.server = ServerProcess(self.repo.path, tmp / "data", tmp / "tailnetd.log")
        self.tmp = tmp
        self.nodes: list[TailscaleNode] = []

    def node(self, name: str) -> TailscaleNode:
        node = TailscaleNode(name, self.tmp / "nodes")
        node.extra_env = {"TS_DEBUG_ALWAYS_USE_DERP": "1"}
        node.start()
        self.nodes.append(node)
        return node


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    net = Net(tmp_path_factory.mktemp("login"))
    net.server.start()
    try:
        yield net
    finally:
        for node in net.nodes:
            node.stop()
        net.server.stop()


class Up:
    """`tailscale up` without a key, running until it finishes; its output is
    read as it comes, so the URL is known while it still waits."""

    def __init__(self, node: TailscaleNode, server: ServerProcess, *extra: str) -> None:
        self.proc = subprocess.Popen(
            [
                str(node.bin / "tailscale"),
                f"--socket={node.socket}",
                "up",
                f"--login-server={server.url}",
                f"--hostname={node.name}",
                *extra,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=node.env(),
        )
        self.output = ""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output += line

    def url(self) -> str:
        match = wait_for(lambda: URL.search(self.output), 30, "tailscale up to print a URL")
        return str(match.group(1))

    def finish(self, timeout: float = 60) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(5)
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        return code


def test_an_interactive_login_approved_from_the_cli_joins_with_peers(net: Net) -> None:
    bob1 = net.node("bob1")
    bob1.up(net.server, net.server.create_key("bob"))
    laptop = net.node("laptop")
    up = Up(laptop, net.server)
    url = up.url()
    auth_id = url.rsplit("/", 1)[1]
    with urllib.request.urlopen(url, timeout=10) as resp:
        page = resp.read().decode()
    assert f"tailnetd nodes register --user NAME {auth_id}" in page
    assert up.proc.poll() is None  # still waiting for the operator

    net.server.admin("nodes", "register", "--user", "alice", auth_id)
    assert up.finish() == 0, up.output
    status = laptop.status()
    assert status["BackendState"] == "Running"
    assert status["User"][str(status["Self"]["UserID"])]["LoginName"] == "alice@example.com"
    wait_for(lambda: "bob1" in laptop.peer_names(), 30, "laptop to see bob1")
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert "Device approved" in resp.read().decode()


def test_a_refused_login_ends_tailscale_up_with_the_reason(net: Net) -> None:
    desk = net.node("desk")
    up = Up(desk, net.server)
    auth_id = up.url().rsplit("/", 1)[1]
    net.server.admin("nodes", "refuse", auth_id, "--reason", "not a company machine")
    assert up.finish() != 0
    assert "not a company machine" in up.output


def test_with_device_approval_a_node_with_a_key_waits_for_the_operator(net: Net) -> None:
    head = net.repo.commit({"settings.yaml": "device_approval: required\n"}, "approve devices")
    wait_for(lambda: net.server.status()["serving"] == head, 30, "the commit to be served")
    server1 = net.node("server1")
    up = Up(server1, net.server, f"--auth-key={net.server.create_key('alice')}")
    wait_for(
        lambda: server1.status().get("BackendState") == "NeedsMachineAuth",
        30,
        "server1 to need machine authorization",
    )
    assert server1.peer_names() == set()
    listed = json.loads(net.server.admin("nodes", "list", "--json"))
    (node,) = [n for n in listed if n["name"] == "server1"]
    assert node["approved"] is False

    net.server.admin("nodes", "approve", "server1")
    wait_for(lambda: server1.status().get("BackendState") == "Running", 30, "server1 to run")
    wait_for(lambda: "bob1" in server1.peer_names(), 30, "server1 to see bob1")
    assert up.finish() == 0, up.output
