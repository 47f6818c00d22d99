"""SSH check mode and key expiry through a real identity provider: real tailscaled
1.96.4, Dex on loopback, headless Chromium, OpenSSH's ssh.

A `check` rule holds alice's `tailscale ssh` with Tailscale's own message and URL; bob
signing in at that URL is refused (a page naming both identities); alice signing in lets
the session in. An `accept` rule beside it lets bob in at once. With settings.yaml's
`oidc_key_expiry: token` a node logged in through Dex expires with its ID token (Dex
issues them for a short time here); its client then needs a login and gets back in
through Dex.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from tests.e2e.harness import ALICE_AND_BOB, TailscaleNode, in_parallel, wait_for
from tests.e2e.test_login import Up
from tests.e2e.test_oidc_login import CHROMIUM, Net, browser_login

POLICY = """\
{
  "tagOwners": {"tag:server": ["alice@example.com"]},
  "acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}],
  "ssh": [
    {"action": "check", "src": ["alice@example.com"], "dst": ["tag:server"], "users": ["root"],
     "checkPeriod": "1h"},
    {"action": "accept", "src": ["bob@example.com"], "dst": ["tag:server"], "users": ["root"]},
  ],
}
"""
ID_TOKENS = timedelta(seconds=50)  # Dex's ID token lifetime in this module
FILES = {
    "users.yaml": ALICE_AND_BOB,
    "policy.hujson": POLICY,
    "settings.yaml": "oidc_key_expiry: token\n",
}
VISIT = re.compile(r"# To authenticate, visit: (\S+)")

pytestmark = pytest.mark.skipif(shutil.which("ssh") is None, reason="needs OpenSSH's ssh client")


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    if not Path(CHROMIUM).exists() or shutil.which("go") is None:
        pytest.skip("needs Debian's chromium and Go (make test-tools)")
    net = Net(tmp_path_factory.mktemp("sshoidc"), FILES, f"{int(ID_TOKENS.total_seconds())}s")
    net.start()
    try:
        nodes = {}
        for name in ("server1", "alice1", "bob1"):
            node = TailscaleNode(name, net.tmp / "nodes")
            node.extra_env = {
                "TS_DEBUG_ALWAYS_USE_DERP": "1",
                "XDG_CONFIG_HOME": str(node.dir / "config"),
            }
            net.nodes.append(node)
            nodes[name] = node
        in_parallel(n.start for n in nodes.values())
        keys = {
            "server1": net.server.create_key("alice", "--tag", "tag:server"),
            "alice1": net.server.create_key("alice"),
            "bob1": net.server.create_key("bob"),
        }
        in_parallel((lambda n=n: n.up(net.server, keys[n.name])) for n in nodes.values())
        nodes["server1"].cli("set", "--ssh")
        for name in ("alice1", "bob1"):
            wait_for(
                lambda n=nodes[name]: "server1" in n.peer_names(), 30, f"{name} to see server1"
            )
        yield net
    finally:
        net.stop()


def node(net: Net, name: str) -> TailscaleNode:
    return next(n for n in net.nodes if n.name == name)


class Ssh:
    """`tailscale ssh root@server1 CMD`, its stderr read as it comes (the check's URL
    arrives while the session is held)."""

    def __init__(self, node: TailscaleNode, *command: str) -> None:
        self.proc = subprocess.Popen(
            [str(node.bin / "tailscale"), f"--socket={node.socket}", "ssh", "root@server1",
             *command],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=node.env(),
        )  # fmt: skip
        self.stderr = ""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr += line

    def url(self) -> str:
        match = wait_for(lambda: VISIT.search(self.stderr), 60, "ssh to show the check's URL")
        return str(match.group(1))

    def finish(self, timeout: float = 60) -> tuple[int, str]:
        assert self.proc.stdout is not None and self.proc.stderr is not None
        try:
            self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            stdout = self.proc.stdout.read()
            self.proc.stdout.close()
            self._reader.join(5)
            self.proc.stderr.close()
        return self.proc.returncode, stdout


def test_an_accept_rule_beside_the_check_lets_bob_in_at_once(net: Net) -> None:
    code, stdout = Ssh(node(net, "bob1"), "id", "-un").finish(90)
    assert code == 0 and stdout == "root\n"


def test_the_check_lets_alice_in_only_after_she_signs_in_through_dex(net: Net) -> None:
    # Bob at alice's check URL: refused, naming both; alice's session ends.
    held = Ssh(node(net, "alice1"), "id", "-un")
    url = held.url()
    assert "Tailscale SSH requires an additional check." in held.stderr
    assert url.startswith(net.server.url + "/ssh/check/")
    text = browser_login(url, net.tmp, "bob@example.com", "staff")
    assert "bob@example.com" in text and "alice@example.com" in text
    code, stdout = held.finish()
    assert code != 0 and stdout == ""
    assert "check owner failed for bob@example.com" in net.server.log()

    # Alice signs in: the held session goes on.
    held = Ssh(node(net, "alice1"), "id", "-un")
    url = held.url()
    assert held.proc.poll() is None  # held until she signs in
    text = browser_login(url, net.tmp, "alice@example.com", "staff")
    assert "SSH login approved" in text and "alice@example.com" in text
    code, stdout = held.finish()
    assert code == 0 and stdout == "root\n", held.stderr

    # Within checkPeriod: no check.
    again = Ssh(node(net, "alice1"), "id", "-un")
    code, stdout = again.finish(90)
    assert code == 0 and stdout == "root\n" and "visit:" not in again.stderr


def test_a_node_s_key_expires_with_its_id_token_and_it_logs_in_through_dex_again(
    net: Net,
) -> None:
    laptop = net.node("laptop")
    up = Up(laptop, net.server)
    before = datetime.now().astimezone()
    text = browser_login(up.url(), net.tmp, "alice@example.com", "staff")
    after = datetime.now().astimezone()
    assert "Device approved" in text
    assert up.finish() == 0, up.output
    (entry,) = [n for n in net.server.nodes_json() if n["name"] == "laptop"]
    expiry = datetime.fromisoformat(entry["key_expiry"])
    # Dex's ID token exp, within the time the browser took: not 180 days.
    slack = timedelta(seconds=1)
    assert before + ID_TOKENS - slack <= expiry <= after + ID_TOKENS + slack, entry

    time.sleep(max(0.0, (expiry - datetime.now().astimezone()).total_seconds()))
    wait_for(lambda: laptop.status()["BackendState"] == "NeedsLogin", 60, "laptop to expire")
    again = Up(laptop, net.server)
    url = again.url()
    text = browser_login(url, net.tmp, "alice@example.com", "staff")
    assert "Device approved" in text
    assert again.finish() == 0, again.output
    assert laptop.status()["BackendState"] == "Running"
    (renewed,) = [n for n in net.server.nodes_json() if n["name"] == "laptop"]
    assert renewed["id"] == entry["id"]
    assert datetime.fromisoformat(renewed["key_expiry"]) > expiry
