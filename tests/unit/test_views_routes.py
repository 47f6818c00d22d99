"""Approved routes reach peers with and without a policy, the same way."""

from __future__ import annotations

from dataclasses import replace

import pytest

from gitctl.policy import parse_policy
from gitctl.snapshot import ALLOW_ALL as DEFAULT
from server.tailnet.views import compute_views
from server.wire import Hostinfo, decode
from tests.unit.test_views_lazy import USERS, node

ALLOW_ALL = parse_policy({"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]})


def router(i: int, routes: list[str]) -> object:
    return replace(
        node(i, tags=("tag:web",)),
        hostinfo=decode(Hostinfo, {"Hostname": f"n{i}", "RoutableIPs": routes}),
    )


@pytest.mark.parametrize("policy", [DEFAULT, ALLOW_ALL], ids=["no policy keys", "allow-all policy"])
def test_approved_routes_reach_peers(policy: object) -> None:
    nodes = [
        node(1, "alice"),
        router(2, ["10.9.0.0/24", "0.0.0.0/0", "::/0"]),
        router(3, ["10.9.0.0/24"]),
    ]
    approved = {2: ("10.9.0.0/24", "0.0.0.0/0", "::/0"), 3: ("10.9.0.0/24",)}
    views = compute_views(policy, USERS, nodes, approved)
    seen_by_alice = views.get(1).peers  # type: ignore[union-attr]
    # The first-registered router is primary for the subnet; both exit routes go along.
    assert "10.9.0.0/24" in seen_by_alice[2].allowed_ips
    assert {"0.0.0.0/0", "::/0"} <= set(seen_by_alice[2].allowed_ips)
    assert tuple(seen_by_alice[2].primary_routes) == ("10.9.0.0/24",)
    assert "10.9.0.0/24" not in seen_by_alice[3].allowed_ips
    assert views.get(2).self_primary_routes == ("10.9.0.0/24",)  # type: ignore[union-attr]
