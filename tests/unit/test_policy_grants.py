"""Grants: network access, application capabilities and via routing."""

from __future__ import annotations

import pytest

from gitctl.policy import PolicyError, parse_policy

from .test_policy_helpers import NODES, can_reach, compile_policy, ip_of, node, sees


def test_ip_grant_with_protocol_and_port() -> None:
    tn = compile_policy(
        {"grants": [{"src": ["bob@example.com"], "dst": ["tag:db"], "ip": ["tcp:5432"]}]}
    )
    assert can_reach(tn, "bob-laptop", "db", 5432)
    assert not can_reach(tn, "bob-laptop", "db", 5432, proto=17)
    assert not can_reach(tn, "alice-laptop", "db", 5432)


def test_app_grant_shows_up_in_whois_of_the_destination() -> None:
    caps = {"example.com/cap/admin": [{"level": "rw"}]}
    tn = compile_policy(
        {"grants": [{"src": ["alice@example.com"], "dst": ["tag:web"], "app": caps}]}
    )
    whois = tn.nodes["web"].whois_cap_map
    assert whois[ip_of("alice-laptop")] == caps
    assert sees(tn, "alice-laptop", "web")
    assert not can_reach(tn, "alice-laptop", "web", 443)


def test_danger_all_source_means_any_address() -> None:
    tn = compile_policy(
        {"grants": [{"src": ["autogroup:danger-all"], "dst": ["tag:web"], "ip": ["*"]}]}
    )
    rule = tn.nodes["web"].packet_filter_rules[0]
    assert rule["SrcIPs"] == ["*"]


def test_via_routes_only_through_the_named_router() -> None:
    nodes = {
        **NODES,
        "router": node(
            12, tags=("tag:router",), routes=("10.1.0.0/16",), approved=("10.1.0.0/16",)
        ),
        "router2": node(14, tags=("tag:web",), routes=("10.1.0.0/16",), approved=("10.1.0.0/16",)),
    }
    tn = compile_policy(
        {
            "grants": [
                {
                    "src": ["bob@example.com"],
                    "dst": ["10.1.0.0/16"],
                    "ip": ["*"],
                    "via": ["tag:router"],
                }
            ]
        },
        nodes,
    )
    assert tn.nodes["router"].packet_filter_rules
    assert not tn.nodes["router2"].packet_filter_rules
    assert "10.1.0.0/16" in tn.nodes["bob-laptop"].peers["router"].allowed_ips


@pytest.mark.parametrize(
    "grant, message",
    [
        ({"src": ["*"], "dst": ["*"]}, "ip and app can not both be empty"),
        (
            {"src": ["*"], "dst": ["autogroup:danger-all"], "ip": ["*"]},
            "cannot use autogroup:danger-all as a dst",
        ),
        ({"src": ["*"], "dst": ["0.0.0.0/0"], "ip": ["*"]}, 'use "*" or "autogroup:internet"'),
        (
            {"src": ["*"], "dst": ["*"], "app": {"tailscale.com/cap/secret": [{}]}},
            "must not be in the tailscale.com domain",
        ),
        ({"src": ["*"], "dst": ["*"], "ip": ["tcp:0"]}, "first port must be >0"),
    ],
)
def test_invalid_grants_are_rejected(grant: dict[str, object], message: str) -> None:
    with pytest.raises(PolicyError) as err:
        parse_policy({"grants": [grant]})
    assert message in err.value.message
