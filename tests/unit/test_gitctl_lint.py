"""`gitctl lint`: one test per rule, silences, inventories and output formats."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gitctl.cli import main

USERS = """users:
  - {name: alice, email: alice@example.com}
  - {name: bob, email: bob@example.com}
"""

HEAD = """{
  "groups": {"group:eng": ["alice@example.com", "bob@example.com"], "group:unused": []},
  "tagOwners": {"tag:db": ["group:eng"], "tag:web": ["alice@example.com"],
                "tag:spare": ["alice@example.com"]},
  "hosts": {"printer": "100.100.1.1", "nas": "192.168.1.2"},
"""


def write(tmp: Path, body: str, head: str = HEAD) -> Path:
    d = tmp / "tailnet.d"
    d.mkdir(exist_ok=True)
    (d / "users.yaml").write_text(USERS)
    (d / "policy.hujson").write_text(head + body + "}\n")
    return d


def findings(
    tmp: Path, capsys: pytest.CaptureFixture[str], body: str, *extra: str, head: str = HEAD
) -> tuple[int, list[tuple[int, str]]]:
    """(exit code, [(line, "rule-id: message")])"""
    d = write(tmp, body, head)
    code = main(["lint", "--dir", str(d), "--format", "json", *extra])
    doc = json.loads(capsys.readouterr().out)
    return code, [(x["line"], x["message"]) for x in doc["diagnostics"]]


def ids(found: list[tuple[int, str]]) -> list[str]:
    return [m.split(":")[0] for _, m in found]


CLEAN = """  "acls": [
    {"action": "accept", "src": ["group:eng"], "dst": ["tag:db:5432"]},
    {"action": "accept", "src": ["alice@example.com"], "dst": ["tag:web:443", "printer:631"]},
  ],
  "tests": [{"src": "bob@example.com", "accept": ["tag:db:5432"], "deny": ["tag:web:443"]}],
  "autoApprovers": {"routes": {"192.168.1.0/24": ["tag:spare"]}},
"""


def test_a_clean_policy_has_no_findings_except_unused_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, found = findings(tmp_path, capsys, CLEAN)
    assert code == 1
    assert found == [
        (2, "unused-group: group group:unused is never used in a rule, test or auto-approver"),
        (5, "unused-host: host nas is never used in a rule, test or auto-approver"),
    ]


def test_unused_tag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    body = CLEAN.replace('"autoApprovers": {"routes": {"192.168.1.0/24": ["tag:spare"]}},', "")
    _, found = findings(tmp_path, capsys, body)
    assert (4, "unused-tag: tag tag:spare is never used in a rule, test or auto-approver") in found


def test_a_rule_inside_an_earlier_broader_one_is_shadowed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    body = (
        CLEAN
        + """  "grants": [],
  "ssh": [],
"""
    )
    body = body.replace(
        '"dst": ["tag:web:443", "printer:631"]},',
        '"dst": ["tag:web:443", "printer:631"]},\n'
        '    {"action": "accept", "src": ["bob@example.com"], "dst": ["tag:db:5000-6000"]},\n'
        '    {"action": "accept", "src": ["bob@example.com"], "dst": ["tag:db:5432"]},\n'
        '    {"action": "accept", "src": ["alice@example.com"], "dst": ["tag:web:443"],'
        ' "proto": "tcp"},',
    )
    _, found = findings(tmp_path, capsys, body)
    shadowed = [(line, m) for line, m in found if m.startswith("shadowed-rule")]
    # bob's 5432 is inside group:eng's rule (line 7) and inside bob's own 5000-6000;
    # alice's tcp/443 is inside her rule for tcp, udp and icmp
    assert [line for line, _ in shadowed] == [10, 11]
    assert "acls[0] (" in shadowed[0][1] and "policy.hujson:7)" in shadowed[0][1]
    assert "acls[1]" in shadowed[1][1]


def test_a_narrower_earlier_rule_does_not_shadow_a_wider_later_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    body = CLEAN.replace(
        '"dst": ["tag:db:5432"]},',
        '"dst": ["tag:db:5432"]},\n'
        '    {"action": "accept", "src": ["group:eng"], "dst": ["tag:db:5432,22"]},\n'
        '    {"action": "accept", "src": ["group:eng", "tag:web"], "dst": ["tag:db:5432"]},',
    )
    _, found = findings(tmp_path, capsys, body)
    # acls[0] adds nothing to either later rule: it is the one reported, once
    assert [m.split(" (")[0] for _, m in found if m.startswith("shadowed")] == [
        "shadowed-rule: allows nothing that acls[1]"
    ]


def test_wildcards_self_and_ssh_root(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    body = CLEAN.replace(
        '  ],\n  "tests"',
        '    {"action": "accept", "src": ["*"], "dst": ["tag:web:80"]},\n'
        '    {"action": "accept", "src": ["tag:db"], "dst": ["*:53"]},\n'
        '    {"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self:*"]},\n'
        '  ],\n  "ssh": [{"action": "accept", "src": ["group:eng"], "dst": ["tag:db"],'
        ' "users": ["autogroup:nonroot", "root"]}],\n  "tests"',
    )
    _, found = findings(tmp_path, capsys, body)
    assert ids(found) == [
        "unused-group",
        "unused-host",
        "wildcard-src",
        "wildcard-dst",
        "autogroup-self",
        "ssh-root",
    ]
    assert found[2][0] == 9 and found[5][0] == 13


def test_a_silence_needs_a_reason(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    head = HEAD.replace(
        '"groups":', '// gitctl:ignore unused-group -- kept for the next hire\n  "groups":'
    ).replace('"hosts":', '// gitctl:ignore unused-host\n  "hosts":')
    code, found = findings(tmp_path, capsys, CLEAN, head=head)
    assert code == 1
    assert [(line, m.split(":")[0]) for line, m in found] == [
        (6, "ignore-without-reason"),
        (7, "unused-host"),  # a silence without a reason silences nothing
    ]
    head = head.replace("unused-host\n", "unused-host -- the NAS moves next week\n")
    assert findings(tmp_path, capsys, CLEAN, head=head) == (0, [])


def test_a_silence_before_a_multi_line_rule_covers_its_parts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    head = HEAD.replace(', "group:unused": []', "").replace(', "nas": "192.168.1.2"', "")
    body = CLEAN.replace(
        '  ],\n  "tests"',
        "    // gitctl:ignore wildcard-src -- the status page is public to the tailnet\n"
        '    {"action": "accept",\n     "src": ["*"],\n     "dst": ["tag:web:80"]},\n'
        '  ],\n  "tests"',
    )
    assert findings(tmp_path, capsys, body, head=head) == (0, [])


INVENTORY = {
    "version": 1,
    "users": [
        {"name": "alice", "email": "alice@example.com"},
        {"name": "bob", "email": "bob@example.com"},
    ],
    "nodes": [
        {"name": "laptop", "user": "alice", "tags": [], "ipv4": "100.64.0.1"},
        {"name": "db-1", "user": None, "tags": ["tag:db"], "ipv4": "100.64.0.2"},
    ],
}


def test_with_an_inventory_rules_and_tests_that_name_no_device(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inv = tmp_path / "inv.json"
    inv.write_text(json.dumps(INVENTORY))
    code, found = findings(tmp_path, capsys, CLEAN, "--inventory", str(inv))
    assert code == 1
    # no tag:web device: alice's rule reaches only the printer, which is no device either;
    # bob has no device, so his test names nothing
    assert [(line, m.split(":")[0]) for line, m in found if "no-match" in m] == [
        (8, "no-match-rule"),
        (10, "no-match-test"),
    ]
    assert main(["lint", "--dir", str(tmp_path / "tailnet.d"), "--warn-only"]) == 0
    out = capsys.readouterr()
    assert "tailnet.d/policy.hujson:2:" in out.out and "unused-group" in out.out


def test_github_annotations_and_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = write(tmp_path, CLEAN)
    assert main(["lint", "--dir", str(d), "--format", "github"]) == 1
    assert capsys.readouterr().out.splitlines()[0].startswith("::error file=")
    assert main(["lint", "--dir", str(d)]) == 1
    out = capsys.readouterr()
    first = out.out.splitlines()[0]
    assert first.endswith(
        "policy.hujson:2:69: unused-group: group group:unused is never used in a rule, "
        "test or auto-approver"
    )
    assert out.err.strip() == "2 findings"
    assert main(["lint", "--dir", str(tmp_path / "nowhere")]) == 1


def test_a_git_revision_and_a_policy_whose_tests_fail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.unit.test_sources import commit_files

    monkeypatch.chdir(tmp_path)
    failing = CLEAN.replace('"deny": ["tag:web:443"]', '"deny": ["tag:db:5432"]')
    files = {"tailnet.d/users.yaml": USERS, "tailnet.d/policy.hujson": HEAD + failing + "}\n"}
    commit_files(tmp_path, files, "tests fail")
    # lint still reads the policy: its findings are useful while the tests are being fixed
    assert main(["lint", "--rev", "HEAD", "--format", "json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert [x["message"].split(":")[0] for x in doc["diagnostics"]] == [
        "unused-group",
        "unused-host",
    ]


EXPIRING = """  "acls": [
    {"action": "accept", "src": ["group:eng"], "dst": ["tag:db:5432"]},
    {"action": "accept", "src": ["alice@example.com"], "dst": ["tag:web:443", "printer:631"],
     "expires": "2030-01-02T00:00:00Z"},
    {"action": "accept", "src": ["bob@example.com"], "dst": ["tag:spare:22"],
     "expires": "2030-03-01T00:00:00Z"},
  ],
  "tests": [{"src": "alice@example.com", "accept": ["tag:web:443"]}],
  "autoApprovers": {"routes": {"192.168.1.0/24": ["tag:spare"]}},
"""


def test_a_policy_with_expires_and_tests_lints_at_now_and_reports_what_ends_soon(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inv = tmp_path / "inv.json"
    inv.write_text(json.dumps(INVENTORY))
    now = ["--now", "2030-01-01T00:00:00Z", "--inventory", str(inv)]
    code, found = findings(tmp_path, capsys, EXPIRING, *now)
    assert code == 1 and "expires-soon" not in ids(found)
    code, found = findings(tmp_path, capsys, EXPIRING, *now, "--expiring-within", "2d")
    soon = [(line, m) for line, m in found if m.startswith("expires-soon")]
    # alice's access ends within two days; bob's only in two months
    assert soon == [
        (
            9,  # the line of its "expires"
            "expires-soon: acl access of alice@example.com to tag:web, printer ends at "
            "2030-01-02T00:00:00Z",
        )
    ]
    d = tmp_path / "tailnet.d"
    assert main(["lint", "--dir", str(d), *now, "--expiring-within", "2x"]) == 2
    assert "not a duration" in capsys.readouterr().err
