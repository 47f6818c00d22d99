"""ipsets: named address sets, built by adding and removing targets, used in acls and grants."""

from __future__ import annotations

from typing import Any

import pytest

from gitctl.policy import PolicyError, parse_policy

from .test_policy_helpers import NODES, can_reach, compile_policy

APPROVED = {
    **NODES,
    "router": {**NODES["router"], "approved_routes": ["10.1.0.0/16"]},
}


def ipsets(sets: dict[str, list[str]], **extra: Any) -> dict[str, Any]:
    return {"hosts": {"dbhost": "100.64.0.11"}, "ipsets": sets, **extra}


def test_add_and_remove_resolve_to_collapsed_prefixes() -> None:
    policy = parse_policy(
        ipsets(
            {
                "ipset:lab": ["add 10.1.0.0/16", "remove 10.1.128.0/17", "add dbhost"],
                "ipset:all": ["ipset:lab", "192.168.0.1"],
            }
        )
    )
    assert policy.ipsets["ipset:lab"] == ("10.1.0.0/17", "100.64.0.11/32")
    assert policy.ipsets["ipset:all"] == ("10.1.0.0/17", "100.64.0.11/32", "192.168.0.1/32")


def test_autogroup_internet_less_a_range() -> None:
    policy = parse_policy(ipsets({"ipset:web": ["add autogroup:internet", "remove 8.0.0.0/8"]}))
    assert "8.8.8.8/32" not in policy.ipsets["ipset:web"]
    assert "9.0.0.0/8" in policy.ipsets["ipset:web"]
    assert not any(p.startswith("10.") for p in policy.ipsets["ipset:web"])


def test_an_ipset_as_destination_reaches_what_it_holds_and_not_what_it_removes() -> None:
    doc = ipsets(
        {"ipset:lab": ["add 10.1.0.0/16", "remove 10.1.2.0/24"]},
        acls=[{"action": "accept", "src": ["alice@example.com"], "dst": ["ipset:lab:22"]}],
    )
    tn = compile_policy(doc, APPROVED)
    assert can_reach(tn, "alice-laptop", "router", 22, dst_ip="10.1.1.1")
    assert not can_reach(tn, "alice-laptop", "router", 22, dst_ip="10.1.2.1")
    assert not can_reach(tn, "bob-laptop", "router", 22, dst_ip="10.1.1.1")


def test_an_ipset_as_source_in_a_grant() -> None:
    doc = ipsets(
        {"ipset:alices": ["100.64.0.1", "100.64.0.2"]},
        grants=[{"src": ["ipset:alices"], "dst": ["tag:web"], "ip": ["443"]}],
    )
    tn = compile_policy(doc)
    assert can_reach(tn, "alice-laptop", "web", 443)
    assert can_reach(tn, "alice-phone", "web", 443)
    assert not can_reach(tn, "bob-laptop", "web", 443)


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (
            {"ipset:a": ["ipset:b"], "ipset:b": ["ipset:a"]},
            "circular reference: ipset:a -> ipset:b -> ipset:a",
        ),
        ({"ipset:a": ["add ipset:a"]}, "circular reference: ipset:a -> ipset:a"),
        ({"ipset:a": ["tag:web"]}, "an ipset holds addresses only"),
        ({"ipset:a": ["alice@example.com"]}, "an ipset holds addresses only"),
        ({"ipset:a": ["autogroup:member"]}, "an ipset holds addresses only"),
        ({"ipset:a": ["ipset:missing"]}, 'ipset not found: "ipset:missing"'),
        ({"ipset:a": ["not-an-address"]}, '"not-an-address": invalid address'),
        (
            {"ipset:a": ["10.0.0.0/8", "remove 10.1.0.0/16"]},
            'start each entry with "add" or "remove"',
        ),
        ({"office": ["10.0.0.0/8"]}, 'ipset names must start with "ipset:"'),
    ],
)
def test_invalid_ipsets_are_refused(sets: dict[str, list[str]], message: str) -> None:
    with pytest.raises(PolicyError) as e:
        parse_policy(ipsets(sets))
    assert message in str(e.value)


@pytest.mark.parametrize(
    "doc",
    [
        {"acls": [{"action": "accept", "src": ["*"], "dst": ["ipset:nope:22"]}]},
        {"acls": [{"action": "accept", "src": ["ipset:nope"], "dst": ["*:22"]}]},
    ],
)
def test_an_unknown_ipset_is_an_error(doc: dict[str, Any]) -> None:
    with pytest.raises(PolicyError, match='ipset not found: "ipset:nope"'):
        parse_policy(doc)


@pytest.mark.parametrize(
    "where",
    [
        {
            "ssh": [
                {"action": "accept", "src": ["ipset:lab"], "dst": ["tag:web"], "users": ["root"]}
            ]
        },
        {"nodeAttrs": [{"target": ["ipset:lab"], "attr": ["funnel"]}]},
        {"groups": {"group:g": ["ipset:lab"]}},
        {"autoApprovers": {"routes": {"10.0.0.0/8": ["ipset:lab"]}}},
    ],
)
def test_ipsets_only_where_tailscale_allows_them(where: dict[str, Any]) -> None:
    doc = {"tagOwners": {"tag:web": []}, "ipsets": {"ipset:lab": ["10.0.0.0/8"]}, **where}
    with pytest.raises(PolicyError, match="ipsets can only be used in acls and grants"):
        parse_policy(doc)
