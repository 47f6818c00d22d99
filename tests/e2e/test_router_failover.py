"""HA subnet routers with real 1.96.4 clients: a primary whose tailscaled
stops answering while its control stream stays open (SIGSTOP) loses its
subnet to the other router within seconds, and its return (SIGCONT) does not
take the subnet back."""

from __future__ import annotations

import os
import signal
import time

from tests.e2e.harness import Member, Tailnet, TailscaleNode, tailnet_fixture, wait_for

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


# router1 joins first: the primary is the router registered first.
tailnet = tailnet_fixture(
    FILES,
    members=[
        Member("router1", key=("--tag", "tag:router"), up=(f"--advertise-routes={SUBNET}",)),
    ],
    server_args=["--probe-interval", "1", "--probe-misses", "2"],
)


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
    router1 = tailnet.nodes["router1"]  # registered first, by the fixture
    router2, laptop = tailnet.join(
        [
            Member("router2", key=("--tag", "tag:router"), up=(f"--advertise-routes={SUBNET}",)),
            Member("laptop"),
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
