"""Device posture: a rule with srcPosture admits only the devices that meet it."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from gitctl.policy import PolicyError, Topology, TopologyNode, parse_policy
from gitctl.policy.posture import compare_versions, node_facts, parse_condition
from gitctl.testing import read_topology_file
from server.store._rows import hostinfo_from_text
from server.store.model import Node
from server.tailnet.views import to_topology_node
from server.wire import Hostinfo, decode

from .test_policy_helpers import NODES, can_reach, compile_policy, ip_of, sees
from .test_snapshot import load, messages
from .test_views_lazy import node as lazy_node

LINUX_NEW = {"os": "linux", "os_version": "6.8.0", "ts_version": "1.96.4-t1234abcd-g5678"}
POSTURE_NODES = {
    **NODES,
    # alice's laptop runs a current stable client; her phone an old one; bob's
    # laptop an unstable one; carol's reports nothing at all.
    "alice-laptop": {**NODES["alice-laptop"], **LINUX_NEW, "auto_update": True},
    "alice-phone": {**NODES["alice-phone"], "os": "iOS", "ts_version": "1.38.2"},
    "bob-laptop": {**NODES["bob-laptop"], "os": "macOS", "ts_version": "1.97.10"},
}
POSTURES = {
    "posture:current": ["node:tsVersion >= '1.90'", "node:tsReleaseTrack == 'stable'"],
    "posture:apple": ["node:os IN ['macos', 'ios']"],
}


def compiled(rule: dict[str, Any], **top: Any) -> Any:
    doc = {"postures": POSTURES, "acls": [{"action": "accept", **rule}], **top}
    return compile_policy(doc, POSTURE_NODES)


def test_a_rule_with_a_posture_admits_only_devices_that_meet_it() -> None:
    tn = compiled(
        {"src": ["autogroup:member"], "dst": ["tag:web:443"], "srcPosture": ["posture:current"]}
    )
    assert can_reach(tn, "alice-laptop", "web", 443)
    assert not can_reach(tn, "alice-phone", "web", 443)  # too old
    assert not can_reach(tn, "bob-laptop", "web", 443)  # unstable track
    assert not can_reach(tn, "carol-laptop", "web", 443)  # reports nothing
    assert sees(tn, "web", "alice-laptop") and not sees(tn, "web", "alice-phone")


def test_any_of_several_postures_admits() -> None:
    tn = compiled(
        {"src": ["*"], "dst": ["tag:web:443"], "srcPosture": ["posture:current", "posture:apple"]}
    )
    for name in ("alice-laptop", "alice-phone", "bob-laptop"):
        assert can_reach(tn, name, "web", 443)
    assert not can_reach(tn, "carol-laptop", "web", 443)


def test_a_wildcard_source_with_a_posture_names_devices_not_ranges() -> None:
    tn = compiled({"src": ["*"], "dst": ["tag:web:443"], "srcPosture": ["posture:current"]})
    [rule] = tn.nodes["web"].packet_filter_rules
    assert rule["SrcIPs"] == ["100.64.0.1", "fd7a:115c:a1e0::1"]


def test_default_src_posture_applies_to_rules_without_their_own() -> None:
    doc: dict[str, Any] = {
        "postures": POSTURES,
        "defaultSrcPosture": ["posture:current"],
        "acls": [
            {"action": "accept", "src": ["autogroup:member"], "dst": ["tag:web:443"]},
            {
                "action": "accept",
                "src": ["autogroup:member"],
                "dst": ["tag:db:5432"],
                "srcPosture": ["posture:apple"],  # instead of the default, not in addition
            },
        ],
    }
    tn = compile_policy(doc, POSTURE_NODES)
    assert can_reach(tn, "alice-laptop", "web", 443)
    assert not can_reach(tn, "bob-laptop", "web", 443)
    assert can_reach(tn, "bob-laptop", "db", 5432)
    assert not can_reach(tn, "alice-laptop", "db", 5432)


def test_grants_take_postures_too() -> None:
    doc = {
        "postures": POSTURES,
        "grants": [
            {
                "src": ["autogroup:member"],
                "dst": ["tag:web"],
                "ip": ["443"],
                "srcPosture": ["posture:apple"],
            }
        ],
    }
    tn = compile_policy(doc, POSTURE_NODES)
    assert can_reach(tn, "bob-laptop", "web", 443)
    assert not can_reach(tn, "alice-laptop", "web", 443)


@pytest.mark.parametrize(
    ("condition", "facts", "holds"),
    [
        ("node:os == 'linux'", {"node:os": "linux"}, True),
        ("node:os != 'linux'", {"node:os": "windows"}, True),
        ("node:os != 'linux'", {}, False),  # unset fails every operator but NOT SET
        ("node:os NOT IN ['linux', 'windows']", {"node:os": "macos"}, True),
        ("node:osVersion < '13.4.1'", {"node:osVersion": "13.4.0"}, True),
        ("node:tsVersion <= '1.40'", {"node:tsVersion": "1.40.0"}, False),
        ("node:tsVersion > '1.9'", {"node:tsVersion": "1.10"}, True),
        ("node:tsAutoUpdate == true", {"node:tsAutoUpdate": True}, True),
        ("node:tsAutoUpdate == true", {"node:tsAutoUpdate": False}, False),
        ("node:tsStateEncrypted IS SET", {"node:tsStateEncrypted": False}, True),
        ("node:tsStateEncrypted NOT SET", {}, True),
        ("node:tsStateEncrypted NOT SET", {"node:tsStateEncrypted": True}, False),
    ],
)
def test_operators(condition: str, facts: dict[str, Any], holds: bool) -> None:
    assert parse_condition(condition).holds(facts) is holds


def test_versions_compare_field_by_field() -> None:
    assert compare_versions("1.40", "1.40.1") < 0
    assert compare_versions("1.100.0", "1.99.9") > 0
    assert compare_versions("1.96.4", "1.96.4") == 0


def test_facts_come_from_what_the_node_reports() -> None:
    n = TopologyNode("n", "n", "alice", (), None, None, os="macOS", ts_version="1.97.1-tabc")
    assert node_facts(n) == {
        "node:os": "macos",
        "node:tsVersion": "1.97.1",
        "node:tsReleaseTrack": "unstable",
    }


def test_the_server_reads_posture_facts_from_hostinfo() -> None:
    hostinfo = {
        "OS": "linux",
        "OSVersion": "Debian 12",
        "IPNVersion": "1.96.4-t1234",
        "AllowsUpdate": True,
        "StateEncrypted": False,
    }
    node = _node(decode(Hostinfo, hostinfo))
    topo = to_topology_node(node, ())
    assert (topo.os, topo.os_version, topo.ts_version) == ("linux", "Debian 12", "1.96.4-t1234")
    assert (topo.auto_update, topo.state_encrypted) == (True, False)
    # Nothing reported, or stored text that no longer decodes: nothing is set.
    for stored in ("{}", "not json", "[]", json.dumps({"OS": 7, "AllowsUpdate": "maybe"})):
        topo = to_topology_node(_node(hostinfo_from_text(stored)), ())
        assert (topo.os, topo.auto_update, topo.state_encrypted) == (None, None, None)


def _node(hostinfo: Hostinfo) -> Node:
    return dataclasses.replace(lazy_node(1, "alice"), hostinfo=hostinfo)


def test_topology_files_carry_posture_facts(tmp_path: Any) -> None:
    path = tmp_path / "topo.json"
    path.write_text(
        json.dumps(
            {
                "users": [],
                "nodes": {"a": {"user": None, "tags": [], "os": "windows", "auto_update": False}},
            }
        )
    )
    [n] = read_topology_file(path).nodes
    assert (n.os, n.auto_update, n.ts_version) == ("windows", False, None)


@pytest.mark.parametrize(
    ("condition", "message"),
    [
        ("custom:tier == 'prod'", 'posture attribute "custom:tier" is set through Tailscale'),
        ("crowdstrike:ztaScore >= 50", '"crowdstrike:ztaScore" is supplied by a third-party'),
        ("intune:complianceState == 'compliant'", '"intune:complianceState"'),
        ("ip:country == 'DE'", '"ip:country"'),
        ("node:color == 'red'", 'unknown posture attribute "node:color"'),
        ("node:os >= 'linux'", 'operator ">=" only compares versions'),
        ("node:tsAutoUpdate == 'yes'", "node:tsAutoUpdate takes true or false"),
        ("node:os == linux", "invalid value linux"),
        ("node:os IN 'linux'", "IN needs a list"),
        ("node:os LIKE 'l%'", "invalid posture condition"),
    ],
)
def test_conditions_that_cannot_be_evaluated_are_refused(condition: str, message: str) -> None:
    with pytest.raises(PolicyError, match="postures") as e:
        parse_policy({"postures": {"posture:p": [condition]}})
    assert message in str(e.value)


def test_refusals_name_the_file_line_and_column() -> None:
    result = load(
        {
            "policy.yaml": "postures:\n  'posture:edr':\n    - \"sentinelOne:infected == false\"\n"
            "acls:\n  - {action: accept, src: ['*'], dst: ['*:*'], srcPosture: ['posture:nope']}\n"
        }
    )
    assert result.snapshot is None
    got = messages(result)
    assert any(
        m.startswith("tailnet.d/policy.yaml:3:7:") and "sentinelOne:infected" in m for m in got
    )
    assert any(
        m.startswith("tailnet.d/policy.yaml:5:") and 'posture not found: "posture:nope"' in m
        for m in got
    )


def test_policy_tests_see_postures() -> None:
    base = {
        "postures": POSTURES,
        "acls": [
            {
                "action": "accept",
                "src": ["*"],
                "dst": ["tag:web:443"],
                "srcPosture": ["posture:apple"],
            }
        ],
    }
    ok = {**base, "tests": [{"src": "bob@example.com", "accept": ["tag:web:443"]}]}
    compile_policy(ok, POSTURE_NODES)
    with pytest.raises(PolicyError, match="test\\(s\\) failed"):
        compile_policy(
            {**base, "tests": [{"src": "alice@example.com", "accept": ["tag:web:443"]}]},
            POSTURE_NODES,
        )
    attrs = {
        **base,
        "tests": [
            {
                "src": "carol@other.org",
                "srcPostureAttrs": {"node:os": "ios"},
                "accept": ["tag:web:443"],
            },
            {
                "src": "bob@example.com",
                "srcPostureAttrs": {"node:os": "linux"},
                "deny": ["tag:web:443"],
            },
        ],
    }
    compile_policy(attrs, POSTURE_NODES)


def test_synthetic_topology_devices_report_no_posture() -> None:
    topo = Topology.from_json({"users": [], "nodes": {"x": {"user": None, "tags": []}}})
    assert node_facts(topo.nodes[0]) == {}


SSH_RULE = {"action": "accept", "src": ["autogroup:member"], "dst": ["tag:web"], "users": ["root"]}


def _ssh_sources(tn: Any, dst: str) -> set[str]:
    return {p["nodeIP"] for r in tn.nodes[dst].ssh_policy["rules"] for p in r["principals"]}


def test_ssh_rules_refuse_a_src_posture_of_their_own() -> None:
    """Tailscale's ssh rules have no srcPosture (postures gate acls and grants):
    refused at validation, naming the key, never parsed and ignored."""
    doc = {"postures": POSTURES, "ssh": [{**SSH_RULE, "srcPosture": ["posture:current"]}]}
    with pytest.raises(PolicyError, match="srcPosture is not supported in ssh rules"):
        parse_policy(doc)


def test_a_device_failing_the_default_posture_gains_no_ssh_access() -> None:
    """defaultSrcPosture gates the acl that opens port 22 and the ssh rule's
    sources alike, so no posture-failing device logs in, even where a rule with
    a posture of its own lets it reach port 22."""
    doc: dict[str, Any] = {
        "postures": POSTURES,
        "defaultSrcPosture": ["posture:current"],
        "acls": [
            {"action": "accept", "src": ["autogroup:member"], "dst": ["tag:web:22"]},
            {
                "action": "accept",
                "src": ["autogroup:member"],
                "dst": ["tag:web:22"],
                "srcPosture": ["posture:apple"],
            },
        ],
        "ssh": [SSH_RULE],
    }
    tn = compile_policy(doc, POSTURE_NODES)
    allowed = _ssh_sources(tn, "web")
    assert can_reach(tn, "alice-laptop", "web", 22) and ip_of("alice-laptop") in allowed
    for failing in ("alice-phone", "bob-laptop", "carol-laptop"):
        assert ip_of(failing) not in allowed, failing
    assert not can_reach(tn, "carol-laptop", "web", 22)
    # Without a default posture, every member may log in.
    del doc["defaultSrcPosture"]
    everyone = _ssh_sources(compile_policy(doc, POSTURE_NODES), "web")
    assert {ip_of(n) for n in ("alice-phone", "bob-laptop", "carol-laptop")} <= everyone


def test_ssh_tests_see_the_default_posture() -> None:
    """sshTests judge the same narrowed sources: a user whose devices fail
    defaultSrcPosture is denied, and a test saying otherwise fails CI."""
    base: dict[str, Any] = {
        "postures": POSTURES,
        "defaultSrcPosture": ["posture:current"],
        "acls": [{"action": "accept", "src": ["autogroup:member"], "dst": ["tag:web:22"]}],
        "ssh": [SSH_RULE],
    }
    compile_policy(
        {
            **base,
            "sshTests": [
                {"src": "alice@example.com", "dst": ["tag:web"], "accept": ["root"]},
                {"src": "bob@example.com", "dst": ["tag:web"], "deny": ["root"]},
            ],
        },
        POSTURE_NODES,
    )
    with pytest.raises(PolicyError, match="test\\(s\\) failed"):
        compile_policy(
            {
                **base,
                "sshTests": [{"src": "bob@example.com", "dst": ["tag:web"], "accept": ["root"]}],
            },
            POSTURE_NODES,
        )
