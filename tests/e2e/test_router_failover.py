"""HA subnet routers with real 1.96.4 clients: a primary whose tailscaled
stops answering while its control stream stays open (SIGSTOP) loses its
subnet to the other router within seconds, and its return (SIGCONT) does not
take the subnet back."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import ServerProcess, TailnetRepo, TailscaleNode, in_parallel, wait_for

SUBNET = "10.88.0.0/24"
FILES = {
    "users.yaml": "users:\n  - {name: alice, email: alice@example.com, display_name: Alice}\n",
    "policy.hujson": """{
  "tagOwners": {"tag:router": ["alice@example.com"]},
  "acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}],
}
""",
    "routes.yaml": f"routes:\n  - {{tag: tag:router, routes: [{SUBNET}]}}\n",
}


class Tailnet:
    def __init__(self, tmp: Path) -> None:
        self.repo = TailnetRepo(tmp / "repo", FILES)
        self.server = ServerProcess(
            self.repo.path,
            tmp / "data",
            tmp / "tailnetd.log",
            extra=["--probe-interval", "1", "--probe-misses", "2"],
        )
        self.nodes = {name: TailscaleNode(name, tmp / "nodes" / name) for name in
                      ("router1", "router2", "laptop")}  # fmt: skip
        for node in self.nodes.values():
            node.extra_env = {"TS_DEBUG_ALWAYS_USE_DERP": "1"}


@pytest.fixture
def tailnet(tmp_path: Path) -> Iterator[Tailnet]:
    net = Tailnet(tmp_path)
    net.server.start()
    try:
        yield net
    finally:
        for node in net.nodes.values():
            if node.proc is not None:
                os.kill(node.proc.pid, signal.SIGCONT)  # a stopped daemon cannot terminate
            node.stop()
        net.server.stop()


def primary(laptop: TailscaleNode) -> str | None:
    """Which router laptop is told serves the subnet."""
    owners = [
        entry["HostName"]
        for entry in (laptop.status().get("Peer") or {}).values()
        if SUBNET in (entry.get("PrimaryRoutes") or [])
    ]
    assert len(owners) <= 1, owners
    return owners[0] if owners else None


def test_a_primary_that_stops_answering_fails_over_and_its_return_does_not_flap(
    tailnet: Tailnet,
) -> None:
    router1, router2, laptop = (tailnet.nodes[n] for n in ("router1", "router2", "laptop"))
    in_parallel(n.start for n in (router1, router2, laptop))
    tagged = tailnet.server.create_key("alice", "--tag", "tag:router", "--reusable")
    router1.up(tailnet.server, tagged, f"--advertise-routes={SUBNET}")  # registered first
    in_parallel(
        [
            lambda: router2.up(tailnet.server, tagged, f"--advertise-routes={SUBNET}"),
            lambda: laptop.up(tailnet.server, tailnet.server.create_key("alice")),
        ]
    )
    wait_for(lambda: primary(laptop) == "router1", 30, "router1 to be the primary")
    for _ in range(4):  # probed every second, it answers: it stays primary
        time.sleep(1)
        assert primary(laptop) == "router1"
    assert "stopped answering" not in tailnet.server.log()

    assert router1.proc is not None
    os.kill(router1.proc.pid, signal.SIGSTOP)  # its TCP stream stays open; it answers nothing
    wait_for(lambda: primary(laptop) == "router2", 15, "router2 to take the subnet")
    assert "stopped answering health probes" in tailnet.server.log()

    os.kill(router1.proc.pid, signal.SIGCONT)
    wait_for(lambda: "answers health probes" in tailnet.server.log(), 20, "router1 to answer")
    for _ in range(5):  # nothing flaps: router2 keeps the subnet
        assert primary(laptop) == "router2"
        time.sleep(1)
