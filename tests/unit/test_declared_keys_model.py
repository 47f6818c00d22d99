"""keys.yaml: declared pre-auth keys load into the snapshot with their secret references,
and every mistake is reported at its line."""

from __future__ import annotations

from datetime import UTC, datetime

from gitctl.tailnet import KeySpec, SecretRef
from tests.unit.test_snapshot import load, messages

USERS = "users:\n  - {name: alice, email: alice@example.com}\n"
POLICY = '{"tagOwners": {"tag:ci": ["alice@example.com"]}}\n'
KEYS = """keys:
  - name: ci-runners
    tags: [tag:ci]
    reusable: true
    ephemeral: true
    expires: 2027-01-01T00:00:00Z
    secret: {env: TAILNETD_KEY_CI}
  - name: alice-laptop
    user: alice
    secret: {file: /run/secrets/alice-key}
"""


def test_declared_keys_are_part_of_the_snapshot() -> None:
    result = load({"users.yaml": USERS, "policy.hujson": POLICY, "keys.yaml": KEYS})
    assert result.snapshot is not None, messages(result)
    assert result.snapshot.keys == (
        KeySpec(
            "ci-runners", None, ("tag:ci",), True, True,
            datetime(2027, 1, 1, tzinfo=UTC), SecretRef("env", "TAILNETD_KEY_CI"),
        ),
        KeySpec(
            "alice-laptop", "alice", (), False, False, None,
            SecretRef("file", "/run/secrets/alice-key"),
        ),
    )  # fmt: skip


def test_mistakes_are_named_at_their_line() -> None:
    bad = """keys:
  - name: one
    user: bob
    secret: {env: K1}
  - name: one
    tags: [tag:nope]
    expires: soon
    secret: {env: K2}
  - name: both
    user: alice
    tags: [tag:ci]
    secret: {env: K3}
  - name: inline
    user: alice
    secret: tskey-auth-abc
"""
    result = load({"users.yaml": USERS, "policy.hujson": POLICY, "keys.yaml": bad})
    assert result.snapshot is None
    text = "\n".join(messages(result))
    assert "keys.yaml:10:" in text or "keys.yaml:9:" in text  # user and tags together
    assert "keys.yaml:15:" in text  # a secret written into git is refused
    fixed = bad.replace("    tags: [tag:ci]\n", "").replace(
        "secret: tskey-auth-abc", "secret: {env: K4}"
    )
    result = load({"users.yaml": USERS, "policy.hujson": POLICY, "keys.yaml": fixed})
    found = messages(result)
    assert any("keys.yaml:3:" in m and '"bob" is not in users' in m for m in found), found
    assert any("keys.yaml:2:" in m and "also used at tailnet.d/keys.yaml:5" in m for m in found)
    assert any("keys.yaml:7:" in m and "RFC 3339" in m for m in found), found
    fixed = fixed.replace("user: bob", "user: alice").replace("expires: soon\n    ", "")
    fixed = fixed.replace("name: one\n    tags", "name: two\n    tags")
    result = load({"users.yaml": USERS, "policy.hujson": POLICY, "keys.yaml": fixed})
    found = messages(result)
    assert any(
        "keys.yaml:6:" in m and '"tag:nope" is not declared in tagOwners' in m for m in found
    ), found
