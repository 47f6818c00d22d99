"""SSH rules: who may log in where, as which local user, with or without check."""

from __future__ import annotations

from typing import Any

import pytest

from gitctl.policy import CompiledTailnet, PolicyError, Topology, compile_tailnet, parse_policy

from .test_policy_helpers import NODES, USERS, compile_policy, ip_of


def ssh(*rules: dict[str, object]) -> dict[str, object]:
    return {"grants": [{"src": ["*"], "dst": ["*"], "ip": ["*"]}], "ssh": list(rules)}


def rules_on(tn: CompiledTailnet, name: str) -> list[Any]:
    return list(tn.nodes[name].ssh_policy["rules"])


def test_accept_lists_source_addresses_and_users() -> None:
    tn = compile_policy(
        ssh(
            {
                "action": "accept",
                "src": ["bob@example.com"],
                "dst": ["tag:web"],
                "users": ["ubuntu"],
            }
        )
    )
    [rule] = rules_on(tn, "web")
    assert {"nodeIP": ip_of("bob-laptop")} in rule["principals"]
    assert rule["sshUsers"] == {"root": "", "ubuntu": "ubuntu"}
    assert rule["action"]["accept"] is True
    assert rules_on(tn, "db") == []


def test_check_action_holds_and_comes_before_accept() -> None:
    policy = ssh(
        {"action": "accept", "src": ["autogroup:member"], "dst": ["tag:web"], "users": ["root"]},
        {"action": "check", "src": ["autogroup:member"], "dst": ["tag:web"], "users": ["root"]},
    )
    first, second = rules_on(compile_policy(policy), "web")
    assert "holdAndDelegate" in first["action"]
    assert second["action"]["accept"] is True


def test_self_and_nonroot() -> None:
    tn = compile_policy(
        ssh(
            {
                "action": "accept",
                "src": ["autogroup:member"],
                "dst": ["autogroup:self"],
                "users": ["autogroup:nonroot"],
            }
        )
    )
    [rule] = rules_on(tn, "alice-laptop")
    ips = {p["nodeIP"] for p in rule["principals"]}
    assert ip_of("alice-phone") in ips and ip_of("bob-laptop") not in ips
    assert rule["sshUsers"] == {"*": "=", "root": ""}


def test_localpart_maps_each_user_to_their_login() -> None:
    tn = compile_policy(
        ssh(
            {
                "action": "accept",
                "src": ["autogroup:member"],
                "dst": ["tag:web"],
                "users": ["localpart:*@example.com"],
            }
        )
    )
    logins = [r["sshUsers"] for r in rules_on(tn, "web")]
    assert {"bob": "bob"} in logins and {"alice": "alice"} in logins
    assert {"carol": "carol"} not in logins


def test_user_domain_must_belong_to_the_tailnet() -> None:
    policy = parse_policy(
        {
            "ssh": [
                {
                    "action": "accept",
                    "src": ["user:*@elsewhere.net"],
                    "dst": ["autogroup:self"],
                    "users": ["root"],
                }
            ]
        }
    )
    with pytest.raises(PolicyError, match="elsewhere.net is not associated with this Tailnet"):
        compile_tailnet(policy, Topology.from_json({"users": USERS, "nodes": NODES}))


@pytest.mark.parametrize(
    "rule, message",
    [
        (
            {"action": "deny", "src": ["*"], "dst": ["autogroup:self"], "users": ["root"]},
            '"deny" is not a valid action',
        ),
        ({"action": "accept", "src": ["*"], "dst": ["autogroup:self"]}, "users must be specified"),
        (
            {
                "action": "check",
                "checkPeriod": "-1m",
                "src": ["*"],
                "dst": ["autogroup:self"],
                "users": ["root"],
            },
            "checkPeriod -1m0s must be a positive duration",
        ),
    ],
)
def test_invalid_ssh_rules(rule: dict[str, object], message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        parse_policy({"ssh": [rule]})
