"""The load generator against a real `tailnetd serve` subprocess, checked for
correctness, not speed: ~200 simulated clients speaking the real protocol end
with exactly the peers the policy gives them, a policy commit reaches every
client, a join reaches every peer, and an endpoint change reaches every
client that sees the node. (python -m bench.bench_socket measures the speed.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import pytest

from bench.loadgen.fleet import Fleet, SimNode, has_peer_key, peer_endpoints
from bench.loadgen.local import LocalServer, local_server
from bench.loadgen.netmap import ClientNetmap

pytestmark = pytest.mark.load

USERS = """\
users:
  - {name: alice, email: alice@example.com, display_name: Alice}
  - {name: bob, email: bob@example.com, display_name: Bob}
"""
# alice's devices reach each other; bob's reach alice's, not each other. So an
# alice device has every other device as a peer, a bob device only alice's.
POLICY = """\
{
  "acls": [
    {"action": "accept", "src": ["alice@example.com"], "dst": ["alice@example.com:*"]},
    {"action": "accept", "src": ["bob@example.com"], "dst": ["alice@example.com:22"]},
  ],
}
"""
# The commit: bob's devices may now reach each other too.
POLICY_BOB_MESH = POLICY.replace(
    '"dst": ["alice@example.com:22"]},',
    '"dst": ["alice@example.com:22"]},\n'
    '    {"action": "accept", "src": ["bob@example.com"], "dst": ["bob@example.com:*"]},',
)
ALICES, BOBS = 100, 100
TIMEOUT = 20.0


def peer_keys(netmap: ClientNetmap) -> set[str]:
    return {peer["Key"] for peer in netmap.peers.values()}


def keys(nodes: Iterable[SimNode]) -> set[str]:
    return {node.node_key for node in nodes}


def exactly(expected: set[str]) -> object:
    return lambda netmap: peer_keys(netmap) == expected


async def scenario(server: LocalServer) -> None:
    alice = Fleet(server.address, server.key("alice"), hostname_prefix="alice")
    bob = Fleet(server.address, server.key("bob"), hostname_prefix="bob")
    try:
        await asyncio.gather(alice.add(ALICES), bob.add(BOBS))
        everyone = alice.nodes + bob.nodes

        def policy_peers(node: SimNode, *, bob_mesh: bool) -> set[str]:
            others = keys(everyone) if node in alice.nodes else keys(alice.nodes)
            if bob_mesh and node in bob.nodes:
                others |= keys(bob.nodes)
            return others - {node.node_key}

        # Every client holds exactly what the policy gives it (once the
        # registrations that raced its first map have reached it).
        await alice.observe(
            everyone,
            lambda n: exactly(policy_peers(n, bob_mesh=False)),
            lambda: asyncio.sleep(0),
            timeout=TIMEOUT,
        )

        # A commit reaches every client it changes: bob's devices see each other.
        await alice.observe(
            everyone,
            lambda n: exactly(policy_peers(n, bob_mesh=True)),
            lambda: asyncio.to_thread(
                server.commit, {"policy.hujson": POLICY_BOB_MESH}, "bob mesh"
            ),
            timeout=TIMEOUT,
        )

        # A join reaches every peer: a new alice device is everyone's peer.
        newcomer = alice.new_node()
        await alice.observe(
            everyone,
            lambda _: has_peer_key(newcomer.node_key),
            lambda: alice.bring_up(newcomer),
            timeout=TIMEOUT,
        )
        assert peer_keys(newcomer.netmap) == keys(everyone)

        # An endpoint change reaches every client that sees the node (everyone).
        mover = bob.nodes[0]
        assert mover.node_id is not None
        endpoints = ["127.0.0.1:41641", "127.0.0.3:41641"]
        await alice.observe(
            [n for n in alice.nodes + bob.nodes if n is not mover],
            lambda _: peer_endpoints(mover.node_id or 0, endpoints),
            lambda: bob.set_endpoints(mover, endpoints),
            timeout=TIMEOUT,
        )
        assert all(not n.ended.is_set() for n in alice.nodes + bob.nodes)
    finally:
        await alice.close()
        await bob.close()


def test_simulated_clients_hold_what_the_policy_gives_them() -> None:
    with local_server({"users.yaml": USERS, "policy.hujson": POLICY}) as server:
        asyncio.run(asyncio.wait_for(scenario(server), 90))
