"""`gitctl diff --expiring-within` and `--now`: time-limited access seen from the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gitctl.cli import main
from gitctl.expiring import parse_window
from tests.unit.test_sources import commit_files

USERS = """users:
  - {name: alice, email: alice@example.com}
  - {name: bob, email: bob@example.com}
"""

POLICY = """{
  "groups": {"group:eng": ["alice@example.com",
                           {"user": "bob@example.com", "expires": "2026-05-20T00:00:00Z"}]},
  "tagOwners": {"tag:db": ["alice@example.com"]},
  "acls": [
    {"action": "accept", "src": ["group:eng"], "dst": ["tag:db:22"]},
    {"action": "accept", "src": ["bob@example.com"], "dst": ["tag:db:5432"],
     "expires": "2026-05-01T17:00:00Z"},
  ],
}
"""


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    base = '{"tagOwners": {"tag:db": ["alice@example.com"]}, "acls": []}\n'
    commit_files(tmp_path, {"tailnet.d/users.yaml": USERS, "tailnet.d/policy.hujson": base}, "base")
    commit_files(tmp_path, {"tailnet.d/policy.hujson": POLICY}, "expiring access")
    return tmp_path


def test_diff_lists_access_expiring_within_the_window(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["diff", "HEAD~1", "--now", "2026-04-28T00:00:00Z"]) == 0
    out = capsys.readouterr().out
    assert out.endswith(
        "Access expiring within 7d\n"
        "  ! bob@example.com: access to tag:db (acls[1]) ends at 2026-05-01 17:00 UTC "
        "(tailnet.d/policy.hujson:8:17)\n"
    )
    assert main(["diff", "HEAD~1", "--now", "2026-04-28T00:00:00Z", "--expiring-within", "4w"]) == 0
    assert (
        "  ! bob@example.com leaves group:eng at 2026-05-20 00:00 UTC (tailnet.d/policy.hujson:3:"
        in (capsys.readouterr().out)
    )


def test_diff_json_lists_expiring_access(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["diff", "HEAD~1", "--format", "json", "--now", "2026-04-28T00:00:00Z"]
    assert main([*args, "--expiring-within", "30d"]) == 0
    expiring = json.loads(capsys.readouterr().out)["expiring"]
    assert [(e["kind"], e["who"], e["what"], e["expires"]) for e in expiring] == [
        ("acl", ["bob@example.com"], "tag:db", "2026-05-01T17:00:00Z"),
        ("group member", ["bob@example.com"], "group:eng", "2026-05-20T00:00:00Z"),
    ]


def test_diff_compares_access_in_force_now(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["diff", "HEAD~1", "--now", "2026-05-02T00:00:00Z"]) == 0
    out = capsys.readouterr().out
    assert "5432" not in out  # bob's entry has expired: not a gain any more
    assert "group:eng\n  + can now reach tag:db on port 22" in out  # bob is still a member
    assert "Access expiring" not in out


def test_a_bad_duration_or_time_is_a_usage_error(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["diff", "HEAD~1", "--expiring-within", "a week"]) == 2
    assert "not a duration such as 7d" in capsys.readouterr().err
    assert main(["validate", "--now", "tomorrow"]) == 2
    assert "RFC 3339" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "seconds"), [("7d", 604800), ("36h", 129600), ("1d12h", 129600), ("2w", 1209600)]
)
def test_windows(text: str, seconds: int) -> None:
    assert parse_window(text).total_seconds() == seconds


@pytest.mark.parametrize("text", ["", "7", "d7", "1.5d", "7 d", "99999w"])
def test_bad_windows(text: str) -> None:
    with pytest.raises(ValueError):
        parse_window(text)
