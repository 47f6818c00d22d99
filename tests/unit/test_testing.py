"""Policy tests on a commit alone: hypothetical devices, failures at their line, commits refused."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from gitctl.policy import Topology
from gitctl.snapshot import LoadResult, Snapshot, load_from_directory, load_from_git
from gitctl.testing import check_tests, synthetic_topology
from tests.unit.test_snapshot import load
from tests.unit.test_sources import commit_files

EXAMPLE = Path(__file__).resolve().parents[2] / "tailnet.d"

USERS = """users:
  - {name: alice, email: alice@example.com}
  - {name: bob, email: bob@example.com}
"""

POLICY = """{
  "tagOwners": {"tag:db": ["alice@example.com"], "tag:web": ["alice@example.com"]},
  "acls": [{"action": "accept", "src": ["bob@example.com"], "dst": ["tag:db:5432"]}],
  "ssh": [{"action": "accept", "src": ["alice@example.com"], "dst": ["tag:db"], "users": ["root"]}],
  "tests": [
    %s
  ],
}
"""


def snapshot(files: dict[str, str]) -> Snapshot:
    result = load(files)
    assert result.snapshot is not None, [str(d) for d in result.diagnostics]
    return result.snapshot


def with_tests(tests: str, users: str = USERS) -> LoadResult:
    return load({"users.yaml": users, "policy.hujson": POLICY % tests})


def test_one_hypothetical_device_per_user_and_tag_at_the_top_of_the_prefix() -> None:
    snap = snapshot({"users.yaml": USERS, "policy.hujson": POLICY % ""})
    topo = synthetic_topology(snap)
    owners = [(n.user, n.tags) for n in topo.nodes]
    assert owners == [("alice", ()), ("bob", ()), (None, ("tag:db",)), (None, ("tag:web",))]
    assert [n.ipv4 for n in topo.nodes] == [
        "100.127.255.254",
        "100.127.255.253",
        "100.127.255.252",
        "100.127.255.251",
    ]
    v6 = ipaddress.IPv6Network("fd7a:115c:a1e0::/48")
    assert all(ipaddress.IPv6Address(n.ipv6) in v6 for n in topo.nodes if n.ipv6)
    assert [(u.name, u.email) for u in topo.users] == [
        ("alice", "alice@example.com"),
        ("bob", "bob@example.com"),
    ]
    assert synthetic_topology(snap) == topo  # deterministic


def test_addresses_follow_the_tailnet_prefixes() -> None:
    settings = "ip_prefixes:\n  v4: 100.100.0.0/24\n  v6: null\n"
    files = {"users.yaml": USERS, "settings.yaml": settings, "policy.hujson": POLICY % ""}
    topo = synthetic_topology(snapshot(files))
    assert topo.nodes[0].ipv4 == "100.100.0.254"
    assert all(n.ipv6 is None for n in topo.nodes)


def test_a_real_topology_is_kept_and_its_addresses_avoided() -> None:
    snap = snapshot({"users.yaml": USERS, "policy.hujson": POLICY % ""})
    real = Topology.from_json(
        {
            "users": [{"id": 7, "name": "ali", "email": "alice@example.com"}],
            "nodes": {
                "laptop": {"user": "ali", "tags": [], "ipv4": "100.127.255.254", "ipv6": None},
            },
        }
    )
    topo = synthetic_topology(snap, real=real)
    assert topo.nodes[0].name == "laptop"
    assert "100.127.255.254" not in [n.ipv4 for n in topo.nodes[1:]]
    # alice is the real topology's "ali": her hypothetical device is owned by that user
    assert topo.nodes[1].user == "ali"
    assert [u.name for u in topo.users] == ["ali", "bob"]


def test_routes_approved_for_a_tag_are_served_by_its_device() -> None:
    result = load_from_directory(EXAMPLE)
    assert result.snapshot is not None
    server = [n for n in synthetic_topology(result.snapshot).nodes if n.tags == ("tag:server",)]
    assert server[0].approved_routes == ("10.99.0.0/24",)


def test_the_example_tests_pass() -> None:
    result = load_from_directory(EXAMPLE)
    assert result.snapshot is not None
    assert result.snapshot.policy.tests  # the example does have tests
    assert check_tests(result.snapshot) == []


def test_each_failing_assertion_is_reported_at_its_own_line_and_column() -> None:
    result = with_tests(
        '{"src": "bob@example.com", "accept": ["tag:db:5432", "tag:db:22"],\n'
        '     "deny": ["tag:db:5432"]},'
    )
    assert result.snapshot is None  # a failing test refuses the commit
    assert [str(d) for d in result.diagnostics] == [
        "tailnet.d/policy.hujson:6:58: policy test failed: "
        "bob@example.com -> tag:db:22: expected accept, got deny",
        "tailnet.d/policy.hujson:7:15: policy test failed: "
        "bob@example.com -> tag:db:5432: expected deny, got accept",
    ]
    assert result.diagnostics[0].key_path == ("policy", "tests", 0, "accept", 1)


def test_a_source_without_devices_is_reported_once_at_src() -> None:
    result = with_tests('{"src": "carol@example.com", "accept": ["tag:db:5432", "tag:db:22"]},')
    (d,) = result.diagnostics
    assert (d.line, d.col) == (6, 13)
    assert "carol@example.com" in d.message and "has no addresses" in d.message
    assert "hypothetical device per user" in d.message


def test_ssh_tests_point_at_the_login() -> None:
    files = {
        "users.yaml": USERS,
        "policy.hujson": (POLICY % "").replace(
            '"tests": [',
            '"sshTests": [{"src": "bob@example.com", "dst": ["tag:db"], '
            '"accept": ["root"], "deny": ["ubuntu"]}],\n  "tests": [',
        ),
    }
    result = load(files)
    (d,) = result.diagnostics
    assert d.key_path == ("policy", "sshTests", 0, "accept", 0)
    assert d.message == (
        "policy test failed: ssh bob@example.com -> root@tag:db: expected accept, got deny"
    )
    assert result.texts[d.file].splitlines()[d.line - 1][d.col - 1 :].startswith('"root"')


def test_tests_in_a_drop_in_file_are_located_in_that_file() -> None:
    files = {
        "users.yaml": USERS,
        "policy.hujson": POLICY % "",
        "zz-tests.yaml": "tests:\n  - src: bob@example.com\n    accept: [tag:web:80]\n",
    }
    (d,) = load(files).diagnostics
    assert (d.file, d.line) == ("tailnet.d/zz-tests.yaml", 3)


def test_a_commit_whose_tests_fail_does_not_load_but_its_parent_does(tmp_path: Path) -> None:
    policy = POLICY % '{"src": "bob@example.com", "accept": ["tag:db:5432"]},'
    files = {"tailnet.d/users.yaml": USERS, "tailnet.d/policy.hujson": policy}
    good = commit_files(tmp_path, files, "policy with a passing test")
    closed = policy.replace('"dst": ["tag:db:5432"]', '"dst": ["tag:db:5433"]')
    bad = commit_files(tmp_path, {"tailnet.d/policy.hujson": closed}, "move the database port")
    assert load_from_git(tmp_path, good).ok
    broken = load_from_git(tmp_path, bad)
    assert not broken.ok
    assert [d.message for d in broken.diagnostics] == [
        "policy test failed: bob@example.com -> tag:db:5432: expected accept, got deny"
    ]
