"""Every policy Tailscale refuses is refused here, with Tailscale's wording, and
nothing is parsed and then ignored."""

from __future__ import annotations

from typing import Any

import pytest

from gitctl.policy import PolicyError, parse_policy

from .test_policy_helpers import compile_policy
from .test_snapshot import load, messages

TAGS = {"tag:web": [], "tag:router": []}


def acl(src: list[str], dst: list[str], **extra: Any) -> dict[str, Any]:
    return {"tagOwners": TAGS, "acls": [{"action": "accept", "src": src, "dst": dst, **extra}]}


def grant(**g: Any) -> dict[str, Any]:
    return {"tagOwners": TAGS, "grants": [{"src": ["*"], "dst": ["tag:web"], **g}]}


def ssh(**rule: Any) -> dict[str, Any]:
    base = {
        "action": "accept",
        "src": ["autogroup:member"],
        "dst": ["autogroup:self"],
        "users": ["root"],
    }
    return {"tagOwners": TAGS, "ssh": [{**base, **rule}]}


REFUSED = [
    # names that resolve to nothing
    (acl(["tag:nope"], ["*:*"]), 'src=tag not found: "tag:nope"'),
    (acl(["*"], ["tag:nope:22"]), 'dst="tag:nope": tag not found: "tag:nope"'),
    (acl(["group:nope"], ["*:*"]), 'group not found: "group:nope"'),
    (acl(["autogroup:nope"], ["*:*"]), 'autogroup not found: "autogroup:nope"'),
    (acl(["%bogus%"], ["*:*"]), '"%bogus%": invalid address'),
    (
        {"groups": {"group:a": ["group:b"], "group:b": []}},
        '"group:b": group members cannot be recursive',
    ),
    ({"tagOwners": {"tag:1x": []}}, "tag names must start with a letter, after 'tag:'"),
    # actions, ports and protocols
    (
        {"acls": [{"action": "deny", "src": ["*"], "dst": ["*:*"]}]},
        'action "deny" is not supported',
    ),
    (acl(["*"], ["*:0"]), "first port must be >0, or use '*' for wildcard"),
    (acl(["*"], ["*:ssh"]), 'port range "ssh": invalid first integer'),
    (acl(["*"], ["*:22-x"]), 'port range "22-x": invalid last integer'),
    (acl(["*"], ["*:70000"]), 'port range "70000": port out of range'),
    (acl(["*"], ["*:90-80"]), "last port must be >= first port"),
    (acl(["*"], ["*:*"], proto="bogus"), 'unknown protocol "bogus"'),
    # autogroup:self and autogroup:danger-all
    (acl(["tag:web"], ["autogroup:self:*"]), "autogroup:self can only be used with users"),
    (grant(dst=["autogroup:danger-all"], ip=["*"]), "cannot use autogroup:danger-all as a dst"),
    # grants
    (grant(), "ip and app can not both be empty"),
    (grant(ip=["*"], via=["group:x"]), 'via "group:x": only tags may be used'),
    (grant(ip=["*"], via=["tag:nope"]), 'tag "tag:nope" not found'),
    (
        grant(dst=["0.0.0.0/0"], ip=["*"]),
        'to allow all IP addresses, use "*" or "autogroup:internet"',
    ),
    (
        grant(dst=["autogroup:internet"], app={"example.com/cap/x": [{}]}),
        "cannot use app grants with autogroup:internet",
    ),
    (grant(app={"nodomain": [{}]}), "capability name must have the form {domain}/{path}"),
    (
        grant(app={"tailscale.com/cap/secret": [{}]}),
        "capability name must not be in the tailscale.com domain",
    ),
    # SSH
    (ssh(action=""), "action must be specified"),
    (ssh(action="deny"), '"deny" is not a valid action'),
    (ssh(users=[]), "users must be specified"),
    (ssh(users=["*"]), 'user "*" is not valid'),
    (ssh(action="check", checkPeriod="abc"), 'time: invalid duration "abc"'),
    (ssh(action="check", checkPeriod="-1m"), "checkPeriod -1m0s must be a positive duration"),
    (ssh(acceptEnv=[""]), "acceptEnv values cannot be empty"),
    (ssh(dst=["10.0.0.1"]), 'invalid dst "10.0.0.1"'),
    (ssh(recorder=["tag:web"]), "recorder is not supported"),
    (ssh(enforceRecorder=True), "enforceRecorder is not supported"),
    (
        {"sshTests": [{"src": "a@b.c", "dst": ["autogroup:internet"], "accept": ["root"]}]},
        'SSH tests dst contains disallowed element "autogroup:internet"',
    ),
    # nodeAttrs
    (
        {"nodeAttrs": [{"target": ["*"], "ipPool": ["100.100.100.0/24"]}]},
        "IPPool(100.100.100.0/24): network within reserved range",
    ),
    # keys this server cannot honour
    ({"derpMap": {"Regions": {}}, "acls": []}, "derpMap is not supported"),
    ({"OneCGNATRoute": "mullvad"}, "OneCGNATRoute is not supported"),
    # legacy spellings may not be mixed with the current ones
    (
        {"acls": [{"action": "accept", "src": ["*"], "users": ["*"], "dst": ["*:*"]}]},
        '"src" and "users" (its older spelling) cannot both be set',
    ),
    (
        {"tests": [{"src": "a@b.c", "accept": ["1.2.3.4:1"], "allow": ["1.2.3.4:1"]}]},
        '"accept" and "allow"',
    ),
]


@pytest.mark.parametrize(("doc", "message"), REFUSED, ids=[m[:40] for _, m in REFUSED])
def test_tailscale_refuses_it_and_so_do_we(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(PolicyError) as e:
        parse_policy(doc)
    assert message in str(e.value)


FAILS_ITS_TESTS = [
    {"acls": [], "tests": [{"src": "alice@example.com"}]},  # no assertion at all
    {"acls": [], "sshTests": [{"src": "alice@example.com", "dst": ["tag:web"]}]},
]


@pytest.mark.parametrize("doc", FAILS_ITS_TESTS)
def test_empty_test_assertions_fail_as_tailscale_fails_them(doc: dict[str, Any]) -> None:
    with pytest.raises(PolicyError, match=r"test\(s\) failed"):
        compile_policy(doc)


def test_a_short_check_period_is_accepted_as_tailscale_accepts_it() -> None:
    # Captured: Tailscale takes "30s"; only a non-positive period is refused.
    [rule] = parse_policy(ssh(action="check", checkPeriod="30s")).ssh
    assert rule.check_period == 30


def test_legacy_spellings_are_honoured_not_ignored() -> None:
    policy = parse_policy(
        {
            "acls": [{"action": "accept", "users": ["alice@example.com"], "ports": ["*:22"]}],
            "tests": [{"user": "alice@example.com", "allow": ["100.64.0.3:22"]}],
        }
    )
    [rule] = policy.acls
    assert [a.value for a in rule.src] == ["alice@example.com"]
    assert [d.ports[0].first for d in rule.dst] == [22]
    assert policy.tests[0].src == "alice@example.com"
    assert policy.tests[0].accept == ("100.64.0.3:22",)


def test_disable_ipv4_and_node_attr_app_reach_the_nodes() -> None:
    tn = compile_policy(
        {
            "disableIPv4": True,
            "nodeAttrs": [{"target": ["tag:web"], "app": {"example.com/cap/x": [{"a": 1}]}}],
        }
    )
    web = tn.nodes["web"].self_cap_map
    assert "disable-ipv4" in web and web["example.com/cap/x"] == [{"a": 1}]
    assert "example.com/cap/x" not in tn.nodes["db"].self_cap_map


def test_a_refused_key_names_its_file_line_and_column() -> None:
    result = load({"policy.yaml": "acls: []\nOneCGNATRoute: mullvad\n"})
    assert result.snapshot is None
    assert any(
        m.startswith("tailnet.d/policy.yaml:2:") and "OneCGNATRoute" in m for m in messages(result)
    ), messages(result)
