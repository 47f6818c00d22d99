"""`gitctl explain`: its answers agree with the compiled packet filters and SSH policies,
and the command names each rule by file:line."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from gitctl.cli import main
from gitctl.explain import explain_ssh, explain_traffic
from gitctl.explain_cmd import parse_destination
from gitctl.policy import Topology, compile_tailnet, parse_policy
from gitctl.policy.policytests import _ssh_verdict
from gitctl.rules import DEFAULT_PROTOS, PORTLESS, covers
from tests.unit import test_gitctl_diff
from tests.unit import test_policy_perf_gen as gen


def filter_allows(rules: Any, src_ip: str, dst_ip: str, port: int, proto: int) -> bool:
    """What a client's packet filter does with the compiled rules (tailcfg.FilterRule)."""
    for r in rules:
        if "DstPorts" not in r:
            continue
        if proto not in (r.get("IPProto") or DEFAULT_PROTOS):
            continue
        if not any(covers(s, src_ip) for s in r["SrcIPs"]):
            continue
        for d in r["DstPorts"]:
            in_ports = proto in PORTLESS or d["Ports"]["First"] <= port <= d["Ports"]["Last"]
            if covers(d["IP"], dst_ip) and in_ports:
                return True
    return False


@pytest.mark.parametrize("seed", range(12))
def test_explain_agrees_with_the_compiled_filter_for_random_pairs(seed: int) -> None:
    rng = random.Random(seed)
    topo_doc = gen.topology(rng, 14)
    topology = Topology.from_json(topo_doc)
    policy = parse_policy(gen.policy(rng, topo_doc["users"]))
    compiled = compile_tailnet(policy, topology, enforce_tests=False)
    names = [n.name for n in topology.nodes]
    checked = 0
    for _ in range(25):
        a, b = rng.sample(names, 2)
        port = rng.choice([22, 53, 80, 443, 5432, 8050])
        proto = rng.choice([6, 6, 17, 1])
        answer = explain_traffic(policy, topology, a, b, port, proto)
        (pair,) = answer.pairs
        src_ip, dst_ip = pair.src.address, pair.dst.address
        expected = filter_allows(compiled.nodes[b].packet_filter_rules, src_ip, dst_ip, port, proto)
        assert pair.allowed == expected, (a, b, port, proto, pair)
        assert bool(pair.rules) == pair.allowed
        checked += 1
        login = rng.choice(["root", "u0", "u1"])
        ssh = explain_ssh(policy, topology, a, b, login)
        (spair,) = ssh.pairs
        src_node = topology.nodes[names.index(a)]
        src_ips = {ip for ip in (src_node.ipv4, src_node.ipv6) if ip}
        verdict = _ssh_verdict(list(compiled.nodes[b].ssh_policy["rules"]), src_ips, login)
        assert spair.allowed == (verdict is not None), (a, b, login, spair)
        if verdict is not None:
            assert spair.rules[0].detail == f"{verdict} as {login}"
            assert spair.rules[0].path[1] != "?"  # the deciding entry is traced to its rule
    assert checked == 25


def test_destinations_and_ports_are_read_the_way_policies_write_them() -> None:
    assert parse_destination("tag:db:5432") == ("tag:db", 5432)
    assert parse_destination("tag:db") == ("tag:db", None)
    assert parse_destination("db-1:22") == ("db-1", 22)
    assert parse_destination("fd7a:115c:a1e0::1") == ("fd7a:115c:a1e0::1", None)
    assert parse_destination("[fd7a:115c:a1e0::1]:22") == ("fd7a:115c:a1e0::1", 22)
    assert parse_destination("100.64.0.1:80") == ("100.64.0.1", 80)


USERS = """users:
  - {name: alice, email: alice@example.com}
  - {name: bob, email: bob@example.com}
"""
POLICY = """{
  "groups": {"group:eng": ["alice@example.com", "bob@example.com"]},
  "tagOwners": {"tag:db": ["alice@example.com"]},
  "hosts": {"nas": "192.168.1.2"},
  "acls": [
    {"action": "accept", "src": ["group:eng"], "dst": ["tag:db:5432"]},
    {"action": "accept", "src": ["alice@example.com"], "dst": ["tag:db:*"]},
    {"action": "accept", "src": ["bob@example.com"], "dst": ["nas:445"]},
  ],
  "ssh": [
    {"action": "check", "src": ["group:eng"], "dst": ["tag:db"], "users": ["autogroup:nonroot"]},
    {"action": "accept", "src": ["alice@example.com"], "dst": ["tag:db"], "users": ["root"]},
  ],
}
"""
INVENTORY = {
    "version": 1,
    "users": [
        {"name": "alice", "email": "alice@example.com"},
        {"name": "bob", "email": "bob@example.com"},
    ],
    "nodes": [
        {"name": "laptop", "user": "alice", "tags": [], "ipv4": "100.64.0.1"},
        {"name": "phone", "user": "bob", "tags": [], "ipv4": "100.64.0.2"},
        {"name": "db-1", "user": None, "tags": ["tag:db"], "ipv4": "100.64.0.3"},
        {
            "name": "router",
            "user": None,
            "tags": ["tag:db"],
            "ipv4": "100.64.0.4",
            "routes": {"advertised": ["192.168.1.0/24"], "approved": ["192.168.1.0/24"]},
        },
    ],
}


@pytest.fixture
def tailnet(tmp_path: Path) -> Path:
    d = tmp_path / "tailnet.d"
    d.mkdir()
    (d / "users.yaml").write_text(USERS)
    (d / "policy.hujson").write_text(POLICY)
    (tmp_path / "inv.json").write_text(json.dumps(INVENTORY))
    return tmp_path


def explain(tailnet: Path, capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    argv = ["explain", *args, "--dir", str(tailnet / "tailnet.d"), "--format", "json"]
    assert main([*argv, "--inventory", str(tailnet / "inv.json")]) == 0
    doc: dict[str, Any] = json.loads(capsys.readouterr().out)
    return doc


def rules(pair: dict[str, Any]) -> list[tuple[str, int, str]]:
    return [(r["rule"], r["line"], r["detail"]) for r in pair["rules"]]


def test_which_rules_allow_a_port(tailnet: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = explain(tailnet, capsys, "alice", "db-1:5432")
    assert doc["verdict"] == "allowed" and doc["devices"].endswith("inv.json")
    (pair,) = doc["pairs"]
    assert (pair["src"]["name"], pair["dst"]["name"]) == ("laptop", "db-1")
    assert rules(pair) == [("acls[0]", 6, "tcp 5432"), ("acls[1]", 7, "tcp 5432")]
    doc = explain(tailnet, capsys, "bob@example.com", "tag:db:22")
    assert doc["verdict"] == "denied"
    assert [p["dst"]["name"] for p in doc["pairs"]] == ["db-1", "router"]


def test_without_a_port_the_ports_each_rule_gives(
    tailnet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (pair, _) = explain(tailnet, capsys, "laptop", "tag:db")["pairs"]
    assert rules(pair) == [
        ("acls[0]", 6, "tcp/udp 5432; icmp; icmpv6"),
        ("acls[1]", 7, "tcp/udp *; icmp; icmpv6"),
    ]


def test_a_host_behind_a_subnet_router(tailnet: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = explain(tailnet, capsys, "phone", "nas:445")
    (pair,) = doc["pairs"]
    assert pair["dst"] == {"name": "192.168.1.2", "address": "192.168.1.2"}
    assert pair["allowed"] and rules(pair) == [("acls[2]", 8, "tcp 445")]


def test_ssh_first_rule_that_maps_the_login_decides(
    tailnet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (pair,) = explain(tailnet, capsys, "alice", "db-1", "--ssh", "--login", "root")["pairs"]
    assert rules(pair) == [("ssh[1]", 12, "accept as root")]
    (pair,) = explain(tailnet, capsys, "alice", "db-1", "--ssh", "--login", "alice")["pairs"]
    assert rules(pair) == [("ssh[0]", 11, "check as alice")]
    (pair,) = explain(tailnet, capsys, "phone", "db-1", "--ssh", "--login", "root")["pairs"]
    assert not pair["allowed"]
    (pair,) = explain(tailnet, capsys, "alice", "db-1", "--ssh")["pairs"]
    assert rules(pair) == [
        ("ssh[0]", 11, "check: any non-root user"),
        ("ssh[1]", 12, "accept: root"),
    ]


def test_text_and_usage_errors(tailnet: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = str(tailnet / "tailnet.d")
    assert main(["explain", "alice@example.com", "tag:db:5432", "--dir", d]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "alice@example.com → tag:db:5432/tcp: allowed"
    assert out[2].endswith("acls[0] (" + d + "/policy.hujson:6): tcp 5432")
    assert main(["explain", "nobody", "tag:db", "--dir", d]) == 2
    assert '"nobody" is not a device' in capsys.readouterr().err
    assert main(["explain", "alice", "tag:db", "--login", "root", "--dir", d]) == 2
    assert main(["explain", "alice", "tag:db:5432", "--proto", "nope", "--dir", d]) == 2


server = test_gitctl_diff.server  # a fake admin API serving db-1 and bob-laptop


def test_against_a_running_servers_nodes(
    tailnet: Path, server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    d = str(tailnet / "tailnet.d")
    args = ["explain", "bob-laptop", "db-1:5432", "--dir", d, "--server", server]
    assert main([*args, "--api-key", "tskey-good", "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["devices"] == server and doc["verdict"] == "allowed"
    assert [rules(p) for p in doc["pairs"]] == [[("acls[0]", 6, "tcp 5432")]]
    assert main([*args, "--api-key", "tskey-bad"]) == 2
    assert "401" in capsys.readouterr().err


def test_access_expired_at_now_is_left_out_and_the_rest_keep_their_lines(
    tailnet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = tailnet / "tailnet.d" / "policy.hujson"
    text = POLICY.replace(
        '"dst": ["tag:db:5432"]}', '"dst": ["tag:db:5432"], "expires": "2030-01-01T00:00:00Z"}'
    ).replace(
        '"users": ["autogroup:nonroot"]}',
        '"users": ["autogroup:nonroot"], "expires": "2030-01-01T00:00:00Z"}',
    )
    policy.write_text(text)
    before, after = ["--now", "2029-12-31T23:59:59Z"], ["--now", "2030-01-01T00:00:00Z"]
    (pair,) = explain(tailnet, capsys, "alice", "db-1:5432", *before)["pairs"]
    assert rules(pair) == [("acls[0]", 6, "tcp 5432"), ("acls[1]", 7, "tcp 5432")]
    (pair,) = explain(tailnet, capsys, "alice", "db-1:5432", *after)["pairs"]
    assert rules(pair) == [("acls[1]", 7, "tcp 5432")]  # acls[0] has expired
    (pair,) = explain(tailnet, capsys, "phone", "db-1:5432", *after)["pairs"]
    assert not pair["allowed"]
    (pair,) = explain(tailnet, capsys, "alice", "db-1", "--ssh", *after)["pairs"]
    assert rules(pair) == [("ssh[1]", 12, "accept: root")]
    (pair,) = explain(tailnet, capsys, "alice", "db-1", "--ssh", "--login", "root", *after)["pairs"]
    assert rules(pair) == [("ssh[1]", 12, "accept as root")]


def test_a_group_membership_expired_at_now_no_longer_grants(
    tailnet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = tailnet / "tailnet.d" / "policy.hujson"
    bob = '{"user": "bob@example.com", "expires": "2030-01-01T00:00:00Z"}'
    policy.write_text(POLICY.replace('"bob@example.com"]}', bob + "]}", 1))
    (pair,) = explain(tailnet, capsys, "bob", "db-1:5432", "--now", "2029-06-01T00:00:00Z")["pairs"]
    assert rules(pair) == [("acls[0]", 6, "tcp 5432")]
    (pair,) = explain(tailnet, capsys, "bob", "db-1:5432", "--now", "2030-06-01T00:00:00Z")["pairs"]
    assert not pair["allowed"]
