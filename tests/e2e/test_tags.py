"""ACL tags with real clients of every admitted version: `tailscale up
--advertise-tags` is honoured where tagOwners let the node's user own the tag and
refused, with the server's reason shown by the client, where they do not; an
operator's `tailnetd nodes tags` reaches the node itself and its peers; a tag a
commit stops declaring is reported by `tailnetd status`.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e.harness import (
    ALICE_AND_BOB,
    Tailnet,
    diagnose,
    in_parallel,
    tailnet_fixture,
    wait_for,
)
from tests.tailscale_bin import MATRIX

POLICY = """\
{
  "tagOwners": {
    "tag:web": ["alice@example.com"],
    "tag:db": ["bob@example.com"],
    "tag:ops": [],
  },
  "acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}],
}
"""
REFUSED = "requested tag 'tag:db' is not owned by alice@example.com"


net = tailnet_fixture({"users.yaml": ALICE_AND_BOB, "policy.hujson": POLICY})


def _tags(entry: dict[str, Any] | None) -> list[str] | None:
    return None if entry is None else list(entry.get("Tags") or [])


@pytest.mark.parametrize("version", MATRIX)
def test_advertised_tags_are_honoured_or_refused_and_operator_tags_reach_clients(
    net: Tailnet, version: str
) -> None:
    minor = version.split(".")[1]
    web, db, laptop = (net.node(f"{n}-v{minor}", version=version) for n in ("web", "db", "laptop"))
    nodes = [web, db, laptop]
    in_parallel(n.start for n in nodes)
    try:
        key = net.server.create_key("alice", "--reusable")
        in_parallel(
            [
                lambda: web.up(net.server, key, "--advertise-tags=tag:web"),
                lambda: laptop.up(net.server, key),
            ]
        )
        # Owned: the node is its tag's, not alice's.
        assert web.status()["Self"].get("Tags") == ["tag:web"]
        wait_for(lambda: _tags(laptop.peer(web.name)) == ["tag:web"], 30, "laptop to see tag")
        (listed,) = [n for n in net.server.nodes_json() if n["name"] == web.name]
        assert listed["user"] is None and listed["tags"] == ["tag:web"], listed
        # Not owned: `tailscale up` fails and says why.
        out = db.cli(
            "up",
            f"--login-server={net.server.url}",
            f"--auth-key={key}",
            f"--hostname={db.name}",
            "--advertise-tags=tag:db",
            "--timeout=20s",
            timeout=60,
            check=False,
        )
        # Every version prints the server's reason as `tailscale up` fails.
        assert out.returncode == 1, (out, diagnose(net.server, [db]))
        assert out.stderr.strip() == f"backend error: {REFUSED} (see the policy's tagOwners)"
        assert db.name not in net.server.admin("nodes", "list")
        # The operator tags alice's laptop: it and its peers see the tag.
        net.server.admin("nodes", "tags", laptop.name, "--tag", "tag:ops")
        wait_for(lambda: laptop.status()["Self"].get("Tags") == ["tag:ops"], 30, "self tag")
        wait_for(lambda: _tags(web.peer(laptop.name)) == ["tag:ops"], 30, "web to see tag")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{diagnose(net.server, nodes)}") from None
    finally:
        net.forget(nodes)


def test_a_tag_a_commit_stops_declaring_is_reported(net: Tailnet) -> None:
    node = net.node("tagged", version=MATRIX[1])
    node.start()
    try:
        node.up(net.server, net.server.create_key("alice"), "--advertise-tags=tag:web")
        assert "undeclared tags" not in net.server.admin("status")
        without_web = POLICY.replace('"tag:web": ["alice@example.com"],', "")
        net.repo.commit({"policy.hujson": without_web}, "tag:web is gone")
        wait_for(
            lambda: "undeclared tags: node" in net.server.admin("status"),
            30,
            "status to report the node's undeclared tag",
        )
        assert "tagged: tag:web" in net.server.admin("status")
    finally:
        node.stop()
