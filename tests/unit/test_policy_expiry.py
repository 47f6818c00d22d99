"""Time-limited access: entries with `expires` are in force before that time only.

Every test passes its own clock (`now`): nothing here reads the real time.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from gitctl.policy import (
    PolicyError,
    Topology,
    compile_tailnet,
    expiring_within,
    next_expiry,
    parse_policy,
    run_policy_tests,
)
from gitctl.snapshot import load_from_directory

from .test_policy_helpers import NODES, TAG_OWNERS, USERS, can_reach

ENDS = "2026-05-01T17:00:00Z"
T = datetime(2026, 5, 1, 17, 0, tzinfo=UTC)
BEFORE, AT = T - timedelta(seconds=1), T
TOPOLOGY = Topology.from_json({"users": USERS, "nodes": NODES})
BOB_DB = {"action": "accept", "src": ["bob@example.com"], "dst": ["tag:db:5432"]}


def policy(**doc: Any) -> Any:
    return parse_policy({"tagOwners": TAG_OWNERS, **doc})


def bob_reaches_db(p: Any, now: datetime) -> bool:
    return can_reach(compile_tailnet(p, TOPOLOGY, now=now), "bob-laptop", "db", 5432)


def test_an_acl_entry_grants_access_until_it_expires() -> None:
    p = policy(acls=[{**BOB_DB, "expires": ENDS}])
    assert bob_reaches_db(p, BEFORE)
    assert not bob_reaches_db(p, AT)
    assert not bob_reaches_db(p, T + timedelta(days=30))


def test_a_grant_expires() -> None:
    grant = {"src": ["bob@example.com"], "dst": ["tag:db"], "ip": ["5432"], "expires": ENDS}
    p = policy(grants=[grant])
    assert bob_reaches_db(p, BEFORE)
    assert not bob_reaches_db(p, AT)


def test_an_ssh_rule_expires() -> None:
    rule = {
        "action": "accept",
        "src": ["bob@example.com"],
        "dst": ["tag:db"],
        "users": ["root"],
        "expires": "2026-05-01T19:00:00+02:00",  # the same instant, another zone
    }
    p = policy(acls=[BOB_DB], ssh=[rule])

    def rules(now: datetime) -> Any:
        ssh = compile_tailnet(p, TOPOLOGY, now=now).nodes["db"].ssh_policy
        return (ssh or {}).get("rules") or []

    assert rules(BEFORE)
    assert not rules(AT)


def test_a_group_member_leaves_the_group_when_membership_expires() -> None:
    members = ["alice@example.com", {"user": "bob@example.com", "expires": ENDS}]
    p = policy(
        groups={"group:dba": members},
        acls=[{"action": "accept", "src": ["group:dba"], "dst": ["tag:db:5432"]}],
    )
    assert bob_reaches_db(p, BEFORE)
    assert not bob_reaches_db(p, AT)
    # alice, a plain member, keeps her access
    assert can_reach(compile_tailnet(p, TOPOLOGY, now=AT), "alice-laptop", "db", 5432)


def test_a_member_also_listed_without_a_time_never_leaves() -> None:
    members = [{"user": "bob@example.com", "expires": ENDS}, "bob@example.com"]
    p = policy(
        groups={"group:dba": members},
        acls=[{"action": "accept", "src": ["group:dba"], "dst": ["tag:db:5432"]}],
    )
    assert bob_reaches_db(p, T + timedelta(days=365))
    assert next_expiry(p, BEFORE) is None


def test_next_expiry_is_the_earliest_time_still_ahead() -> None:
    later = "2026-06-01T00:00:00Z"
    p = policy(
        groups={"group:dba": [{"user": "bob@example.com", "expires": later}]},
        acls=[{**BOB_DB, "expires": ENDS}],
    )
    assert next_expiry(p, BEFORE) == T
    assert next_expiry(p, AT) == datetime(2026, 6, 1, tzinfo=UTC)
    assert next_expiry(p, datetime(2026, 7, 1, tzinfo=UTC)) is None
    assert next_expiry(policy(acls=[BOB_DB]), BEFORE) is None


def test_expiring_within_names_who_loses_what_and_when() -> None:
    p = policy(
        groups={"group:dba": [{"user": "carol@other.org", "expires": "2026-05-20T00:00:00Z"}]},
        acls=[{**BOB_DB, "expires": ENDS}, {**BOB_DB, "dst": ["tag:web:80"]}],
    )
    soon = expiring_within(p, T - timedelta(days=2), timedelta(days=7))
    assert [(e.kind, e.who, e.what, e.expires, e.path) for e in soon] == [
        ("acl", ("bob@example.com",), "tag:db", T, ("acls", 0, "expires"))
    ]
    later = expiring_within(p, T - timedelta(days=2), timedelta(days=30))
    assert [(e.kind, e.who, e.what) for e in later][1] == (
        "group member",
        ("carol@other.org",),
        "group:dba",
    )
    assert expiring_within(p, AT, timedelta(days=7)) == ()  # already gone is not "expiring"


def test_without_a_clock_a_policy_with_expiry_times_is_refused() -> None:
    p = policy(acls=[BOB_DB, {**BOB_DB, "expires": ENDS}])
    with pytest.raises(PolicyError) as err:
        compile_tailnet(p, TOPOLOGY)
    assert err.value.path == ("acls", 1, "expires")
    assert "current time" in err.value.message
    # a policy without expiry times needs no clock, as before
    assert can_reach(compile_tailnet(policy(acls=[BOB_DB]), TOPOLOGY), "bob-laptop", "db", 5432)


def test_policy_tests_are_judged_at_now() -> None:
    p = policy(
        acls=[{**BOB_DB, "expires": ENDS}],
        tests=[{"src": "bob@example.com", "deny": ["tag:db:5432"]}],
    )
    assert run_policy_tests(p, TOPOLOGY, now=AT) == []
    assert run_policy_tests(p, TOPOLOGY, now=BEFORE)
    with pytest.raises(PolicyError, match="test"):
        compile_tailnet(p, TOPOLOGY, now=BEFORE)
    compile_tailnet(p, TOPOLOGY, now=AT)


@pytest.mark.parametrize(
    ("entry", "path"),
    [
        ({"acls": [{**BOB_DB, "expires": "2026-05-01"}]}, ("acls", 0, "expires")),
        ({"acls": [{**BOB_DB, "expires": "2026-05-01T17:00:00"}]}, ("acls", 0, "expires")),
        (
            {"grants": [{"src": ["*"], "dst": ["*"], "ip": ["*"], "expires": "soon"}]},
            ("grants", 0, "expires"),
        ),
        (
            {"groups": {"group:x": [{"user": "bob@example.com", "expires": 5}]}},
            ("groups", "group:x", 0, "expires"),
        ),
    ],
)
def test_a_bad_time_is_an_error_at_its_value(entry: dict[str, Any], path: tuple[Any]) -> None:
    with pytest.raises(PolicyError) as err:
        policy(**entry)
    assert err.value.path == path
    assert "RFC 3339 time with a zone" in err.value.message


def test_a_malformed_group_member_is_refused() -> None:
    with pytest.raises(PolicyError, match="a group member is a string or"):
        policy(groups={"group:x": [{"member": "bob@example.com"}]})


def tailnet_d(tmp_path: Path, policy_yaml: str) -> Path:
    d = tmp_path / "tailnet.d"
    d.mkdir()
    (d / "users.yaml").write_text("users:\n  - {name: bob, email: bob@example.com}\n")
    (d / "policy.yaml").write_text(policy_yaml)
    return d


def test_a_bad_time_in_tailnet_d_names_file_line_and_column(tmp_path: Path) -> None:
    d = tailnet_d(
        tmp_path,
        "acls:\n"
        "  - action: accept\n"
        "    src: [bob@example.com]\n"
        "    dst: ['*:22']\n"
        "    expires: 2026-05-01T17:00:00\n",
    )
    result = load_from_directory(d, now=BEFORE)
    assert not result.ok
    [diag] = result.diagnostics
    assert (Path(diag.file).name, diag.line, diag.col) == ("policy.yaml", 5, 14)
    assert "RFC 3339 time with a zone" in diag.message


def test_a_commit_with_expiring_access_loads_only_with_a_clock(tmp_path: Path) -> None:
    d = tailnet_d(
        tmp_path,
        "groups:\n"
        "  group:ops:\n"
        "    - {user: bob@example.com, expires: '2026-05-01T17:00:00Z'}\n"
        "acls:\n"
        "  - {action: accept, src: [group:ops], dst: ['*:22']}\n"
        "tests:\n"
        "  - {src: bob@example.com, deny: ['100.64.0.1:22']}\n",
    )
    assert load_from_directory(d, now=AT).ok  # bob has left group:ops: the test holds
    failed = load_from_directory(d, now=BEFORE)
    assert not failed.ok and "policy test failed" in failed.diagnostics[0].message
    refused = load_from_directory(d)  # no clock: refused, pointing at the time
    assert not refused.ok
    [diag] = refused.diagnostics
    assert (diag.line, "current time" in diag.message) == (3, True)
