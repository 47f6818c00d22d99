"""ACLs: who reaches whom, on which ports, through groups, hosts, tags and autogroups."""

from __future__ import annotations

import pytest

from gitctl.policy import PolicyError, parse_policy

from .test_policy_helpers import can_reach, compile_policy, sees


def acl(src: list[str], dst: list[str], **extra: object) -> dict[str, object]:
    return {"acls": [{"action": "accept", "src": src, "dst": dst, **extra}]}


def test_group_members_reach_tagged_server_on_the_allowed_port_only() -> None:
    tn = compile_policy(
        {"groups": {"group:eng": ["bob@example.com"]}, **acl(["group:eng"], ["tag:web:443"])}
    )
    assert can_reach(tn, "bob-laptop", "web", 443)
    assert not can_reach(tn, "bob-laptop", "web", 22)
    assert not can_reach(tn, "alice-laptop", "web", 443)
    assert sees(tn, "bob-laptop", "web") and sees(tn, "web", "bob-laptop")
    assert not sees(tn, "alice-laptop", "web")


def test_hosts_name_addresses() -> None:
    tn = compile_policy(
        {"hosts": {"database": "100.64.0.11"}, **acl(["alice@example.com"], ["database:5432"])}
    )
    assert can_reach(tn, "alice-laptop", "db", 5432)
    assert not can_reach(tn, "bob-laptop", "db", 5432)


def test_port_ranges_lists_and_protocols() -> None:
    tn = compile_policy(acl(["*"], ["tag:web:80-90,443"], proto="udp"))
    assert can_reach(tn, "bob-laptop", "web", 85, proto=17)
    assert can_reach(tn, "bob-laptop", "web", 443, proto=17)
    assert not can_reach(tn, "bob-laptop", "web", 85, proto=6)
    assert not can_reach(tn, "bob-laptop", "web", 91, proto=17)


def test_member_and_tagged_autogroups() -> None:
    tn = compile_policy(acl(["autogroup:member"], ["autogroup:tagged:22"]))
    assert can_reach(tn, "carol-laptop", "db", 22)
    assert not can_reach(tn, "web", "db", 22)
    assert not can_reach(tn, "alice-laptop", "bob-laptop", 22)


def test_autogroup_self_reaches_only_own_devices() -> None:
    tn = compile_policy(acl(["autogroup:member"], ["autogroup:self:*"]))
    assert can_reach(tn, "alice-phone", "alice-laptop", 22)
    assert not can_reach(tn, "bob-laptop", "alice-laptop", 22)
    assert sees(tn, "alice-laptop", "alice-phone")
    assert not sees(tn, "alice-laptop", "bob-laptop")


def test_autogroup_self_needs_user_sources() -> None:
    with pytest.raises(PolicyError, match="autogroup:self can only be used with users"):
        parse_policy({"tagOwners": {"tag:web": []}, **acl(["tag:web"], ["autogroup:self:*"])})


def test_internet_goes_to_approved_exit_nodes() -> None:
    nodes_policy = {
        "autoApprovers": {"exitNode": ["tag:exit"]},
        **acl(["bob@example.com"], ["autogroup:internet:*"]),
    }
    tn = compile_policy(nodes_policy)
    assert can_reach(tn, "bob-laptop", "exit", 443, dst_ip="8.8.8.8")
    assert not can_reach(tn, "bob-laptop", "exit", 443, dst_ip="10.0.0.1")
    assert "0.0.0.0/0" in tn.nodes["bob-laptop"].peers["exit"].allowed_ips


def test_unknown_tag_is_rejected_with_its_location() -> None:
    with pytest.raises(PolicyError) as err:
        parse_policy(acl(["*"], ["tag:nope:22"]))
    assert 'tag not found: "tag:nope"' in err.value.message
    assert err.value.path == ("acls", 0, "dst", 0)


def test_bad_port_is_rejected() -> None:
    with pytest.raises(PolicyError, match='port range "ssh": invalid first integer'):
        parse_policy({"tagOwners": {"tag:web": []}, **acl(["*"], ["tag:web:ssh"])})


def test_nested_groups_are_rejected() -> None:
    with pytest.raises(PolicyError, match="group members cannot be recursive"):
        parse_policy({"groups": {"group:a": ["group:b"], "group:b": []}})


def test_no_acls_and_no_grants_allows_everything() -> None:
    tn = compile_policy({})
    assert can_reach(tn, "bob-laptop", "carol-laptop", 12345)
