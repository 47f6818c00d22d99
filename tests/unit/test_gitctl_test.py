"""`gitctl test`: failing assertions at their line, in every output format, with exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gitctl.cli import main
from tests.unit.test_sources import commit_files

EXAMPLE = Path(__file__).resolve().parents[2] / "tailnet.d"

USERS = """users:
  - {name: alice, email: alice@example.com}
  - {name: bob, email: bob@example.com}
"""

POLICY = """{
  "tagOwners": {"tag:db": ["alice@example.com"]},
  "acls": [{"action": "accept", "src": ["bob@example.com"], "dst": ["%s"]}],
  "tests": [
    {"src": "bob@example.com", "accept": ["tag:db:5432"], "deny": ["tag:db:22"]},
  ],
}
"""


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A repository whose first commit passes its tests and whose second does not."""
    monkeypatch.chdir(tmp_path)
    good = commit_files(
        tmp_path,
        {"tailnet.d/users.yaml": USERS, "tailnet.d/policy.hujson": POLICY % "tag:db:5432"},
        "bob reaches the database",
    )
    bad = commit_files(
        tmp_path, {"tailnet.d/policy.hujson": POLICY % "tag:db:*"}, "bob reaches everything"
    )
    return {"good": good, "bad": bad}


def test_the_example_passes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["test", "--dir", str(EXAMPLE)]) == 0
    assert capsys.readouterr().out == "ok: 1 test passed on 3 devices\n"


def test_a_passing_revision_exits_0(
    repo: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["test", "--rev", repo["good"]]) == 0
    assert "ok: 1 test passed" in capsys.readouterr().out


def test_a_failing_assertion_is_shown_with_its_location(
    repo: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["test", "--repo", ".", "--rev", repo["bad"]]) == 1
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "tailnet.d/policy.hujson:5:68: policy test failed: "
        "bob@example.com -> tag:db:22: expected deny, got accept",
        '        {"src": "bob@example.com", "accept": ["tag:db:5432"], "deny": ["tag:db:22"]},',
        " " * (4 + 67) + "^",
        "1 problem",
    ]


def test_github_format_annotates_the_failing_assertion(
    repo: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["test", "--rev", repo["bad"], "--format", "github"]) == 1
    assert capsys.readouterr().out == (
        "::error file=tailnet.d/policy.hujson,line=5,col=68::policy test failed: "
        "bob@example.com -> tag:db:22: expected deny, got accept\n"
    )


def test_json_format(repo: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["test", "--rev", repo["bad"], "--format", "json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is False and doc["snapshot"] is None
    (d,) = doc["diagnostics"]
    assert d["key"] == "policy.tests[0].deny[0]"
    assert (d["line"], d["col"]) == (5, 68)
    assert main(["test", "--rev", repo["good"], "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True


def test_a_topology_adds_real_devices_to_test_against(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # bob may reach the low addresses, where real devices live and hypothetical ones never do
    policy = (POLICY % "tag:db:5432").replace(
        '"dst": ["tag:db:5432"]}', '"dst": ["tag:db:5432", "100.64.0.0/24:80"]}'
    )
    policy = policy.replace('"deny": ["tag:db:22"]', '"deny": ["tag:db:80"]')
    (tmp_path / "tailnet.d").mkdir()
    (tmp_path / "tailnet.d/users.yaml").write_text(USERS)
    (tmp_path / "tailnet.d/policy.hujson").write_text(policy)
    topo = {
        "users": [{"id": 1, "name": "alice", "email": "alice@example.com"}],
        "nodes": {"db1": {"tags": ["tag:db"], "ipv4": "100.64.0.5", "ipv6": None}},
    }
    (tmp_path / "topo.json").write_text(json.dumps(topo))
    monkeypatch.chdir(tmp_path)
    assert main(["test"]) == 0
    capsys.readouterr()
    assert main(["test", "--topology", "topo.json", "--format", "github"]) == 1
    assert "bob@example.com -> tag:db:80: expected deny, got accept" in capsys.readouterr().out


def test_usage_errors_exit_2(repo: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["test", "--dir", "tailnet.d", "--rev", "HEAD"]) == 2
    assert main(["test", "--topology", "missing.json"]) == 2
    assert "cannot read missing.json" in capsys.readouterr().err
    Path("bad.json").write_text("{")
    assert main(["test", "--topology", "bad.json"]) == 2
    assert "bad.json is not JSON" in capsys.readouterr().err
    assert main(["test", "--format", "xml"]) == 2
