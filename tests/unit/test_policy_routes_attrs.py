"""autoApprovers, route visibility and nodeAttrs."""

from __future__ import annotations

from gitctl.policy import TopologyNode, auto_approved_routes, parse_policy

from .test_policy_helpers import compile_policy

APPROVERS = {"autoApprovers": {"routes": {"10.0.0.0/8": ["tag:router"]}, "exitNode": ["tag:exit"]}}


def test_auto_approvers_cover_sub_prefixes_and_exit_nodes() -> None:
    policy = parse_policy({"tagOwners": {"tag:router": [], "tag:exit": []}, **APPROVERS})
    router = TopologyNode("r", "r", None, ("tag:router",), "100.64.0.1", None)
    exit_node = TopologyNode("e", "e", None, ("tag:exit",), "100.64.0.2", None)
    assert auto_approved_routes(policy, router, ["10.1.0.0/16", "192.168.0.0/24"]) == (
        "10.1.0.0/16",
    )
    assert auto_approved_routes(policy, exit_node, ["0.0.0.0/0", "::/0", "10.0.0.0/8"]) == (
        "0.0.0.0/0",
        "::/0",
    )


def test_approved_route_is_shown_to_those_allowed_into_it() -> None:
    tn = compile_policy(
        {
            **APPROVERS,
            "acls": [{"action": "accept", "src": ["bob@example.com"], "dst": ["10.1.0.0/16:*"]}],
        }
    )
    assert tn.nodes["router"].self_primary_routes == ("10.1.0.0/16",)
    assert "10.1.0.0/16" in tn.nodes["bob-laptop"].peers["router"].allowed_ips
    assert "router" not in tn.nodes["alice-laptop"].peers


def test_node_attrs_reach_their_targets_only() -> None:
    tn = compile_policy(
        {
            "nodeAttrs": [
                {"target": ["tag:web", "bob@example.com"], "attr": ["funnel", "nextdns:abc"]}
            ]
        }
    )
    assert {"funnel", "nextdns:abc"} <= set(tn.nodes["web"].self_cap_map)
    assert "funnel" in tn.nodes["bob-laptop"].self_cap_map
    assert "funnel" not in tn.nodes["alice-laptop"].self_cap_map
